"""What a person sees: curve.png/.svg and report.html show the measured budgets, bands, arms and values."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from types import SimpleNamespace
from xml.etree import ElementTree

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from PIL import Image

from finetune.report import OKABE_ITO, console_table, curve_figure, curve_png, results_frame, summary_table
from finetune.report_html import report_html

ARMS = ["ssl-linear", "scratch"]
BUDGETS = [1, 2, 5, 10, 20, 50, "all"]
POOL = 1257  # labeled images in the pool: "all" is 125.7 labels per class over 10 classes
SETUP = {"dataset": "digits", "method": "simclr", "backbone": "small_cnn"}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """3 seeds x 7 budgets x 2 arms, every accuracy distinct at 3 decimals, the arms far apart."""
    base = {"ssl-linear": (0.55, 0.06), "scratch": (0.12, 0.05)}
    results = [
        SimpleNamespace(
            spec=SimpleNamespace(arm=arm, budget=budget, seed=seed),
            n_labels=POOL if budget == "all" else budget * 10,
            accuracy=round(start + step * i + 0.011 * seed, 3),
            macro_f1=0.5,
            train_seconds=1.0,
        )
        for arm, (start, step) in base.items()
        for i, budget in enumerate(BUDGETS)
        for seed in range(3)
    ]
    return results_frame(results, n_classes=10)


class _Collect(HTMLParser):
    """Tags and their (unescaped) attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _tags(page: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Collect()
    parser.feed(page)
    return parser.tags


def _seed_lines(frame: pd.DataFrame, arm: str, budget: str) -> list[str]:
    runs = frame[(frame.arm == arm) & (frame.budget == budget)]
    return [f"seed {s}: {a:.3f}" for s, a in zip(runs.seed, runs.accuracy, strict=True)]


def test_png_is_1200_by_800(frame):
    image = Image.open(io.BytesIO(curve_png(frame, ARMS, "study: accuracy", **SETUP)))
    image.load()
    assert (image.format, image.size) == ("PNG", (1200, 800))


def test_old_call_still_draws(frame):
    assert curve_png(frame, ARMS, "study: accuracy").startswith(b"\x89PNG")


def test_svg_ticks_are_the_measured_budgets(frame):
    root = ElementTree.fromstring(curve_png(frame, ARMS, "study: accuracy", fmt="svg", **SETUP))
    texts = {"".join(node.itertext()).strip() for node in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"1", "2", "5", "10", "20", "50", "all (1,257)"} <= texts
    assert not any("10^" in text for text in texts)
    assert {"study: accuracy", "dataset digits · method simclr · backbone small_cnn"} <= texts
    assert "band: min..max over 3 seeds" in texts


def test_arms_differ_by_colour_marker_and_line_style(frame):
    figure = curve_figure(frame, ARMS, "study", **SETUP)
    try:
        axis = figure.axes[0]
        lines = {line.get_label(): line for line in axis.get_lines()}
        assert axis.get_xscale() == "log"
        assert [tick.get_text() for tick in axis.get_xticklabels()] == ["1", "2", "5", "10", "20", "50", "all (1,257)"]
    finally:
        plt.close(figure)
    ssl, scratch = lines["ssl-linear"], lines["scratch"]
    assert ssl.get_marker() != scratch.get_marker()
    assert ssl.get_linestyle() != scratch.get_linestyle()
    assert {ssl.get_color(), scratch.get_color()} <= set(OKABE_ITO)
    assert ssl.get_color() != scratch.get_color()


def test_html_is_self_contained(frame):
    page = report_html(frame, ARMS, "study", "dataset digits").decode()
    tags = _tags(page)
    assert not re.search(r"https?://", page)
    assert not [tag for tag, attrs in tags if "src" in attrs or "href" in attrs or tag == "link"]
    assert ("svg", {"id": "curve"}) in [(tag, {"id": attrs.get("id")}) for tag, attrs in tags]


def test_html_shows_the_table_ticks_and_each_seed(frame):
    page = report_html(frame, ARMS, "study", "dataset digits").decode()
    table = summary_table(frame, ARMS)
    assert all(cell in page for cell in table.to_numpy().ravel())
    assert ">all (1,257)</text>" in page and ">1</text>" in page and ">50</text>" in page
    assert "band: min..max over 3 seeds" in page
    tips = {attrs["aria-label"] for tag, attrs in _tags(page) if "point" in attrs.get("class", "")}
    tip = next(t for t in tips if t.startswith("scratch · 5 labels per class"))
    runs = frame[(frame.arm == "scratch") & (frame.budget == "5")]
    assert tip.splitlines()[1:] == [*_seed_lines(frame, "scratch", "5"), f"mean: {runs.accuracy.mean():.3f}"]
    assert len(tips) == len(ARMS) * len(BUDGETS)


def test_html_escapes_every_text(frame):
    odd = frame.assign(arm=frame.arm.replace("scratch", "<b>scratch</b>"))
    title = "study <script>alert(1)</script> & co"
    page = report_html(odd, ARMS, title, 'dataset "<digits>"').decode()
    assert "<script>alert" not in page and "<b>" not in page
    assert "<h1>study &lt;script&gt;alert(1)&lt;/script&gt; &amp; co</h1>" in page
    assert "&quot;&lt;digits&gt;&quot;" in page
    assert page.count("<script>") == 1


def test_forecast_is_drawn_when_given(frame):
    forecast = {"scratch": [(50.0, 0.45), (200.0, 0.6), (500.0, 0.7)]}
    page = report_html(frame, ARMS, "study", "", forecast=forecast).decode()
    assert page.count('class="forecast"') == 2  # the line and its legend sample
    assert "scratch · forecast\n500 labels per class: 0.700" in page
    assert 'class="forecast"' not in report_html(frame, ARMS, "study", "").decode()


def test_report_in_a_browser(frame, tmp_path, browser):
    """Chromium renders the chart and table, fetches nothing else, and hovering a point shows its seeds."""
    from playwright.sync_api import expect

    path = tmp_path / "report.html"
    path.write_bytes(report_html(frame, ARMS, "study", "dataset digits"))
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(path.as_uri())
    assert page.locator("svg#curve").is_visible()
    assert page.locator("#results tbody tr").count() == len(BUDGETS)
    tooltip = page.locator("#tooltip")
    assert tooltip.is_hidden()
    page.hover('.point[data-arm="scratch"][data-budget="all (1,257)"]')
    for line in _seed_lines(frame, "scratch", "all"):
        expect(tooltip).to_contain_text(line)
    assert tooltip.is_visible()
    assert requested == [path.as_uri()]


THIN = {"glioma": 82, "meningioma": 9, "notumor": 0, "pituitary": 52}  # a test split the duplicate guard thinned


@pytest.mark.parametrize(
    ("counts", "level", "label"),
    [
        (THIN, 82 / 143, "chance 0.57 (always 'glioma', the test split's largest class)"),
        ({"a": 30, "b": 30, "c": 30, "d": 30}, 0.25, "chance 0.25 (1 of 4 classes)"),
    ],
)
def test_curve_draws_the_chance_level(frame, counts, level, label):
    figure = curve_figure(frame, ARMS, "study", test_counts=counts, **SETUP)
    try:
        lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
        assert label in lines and list(lines[label].get_ydata()) == pytest.approx([level, level])
        assert label in [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    finally:
        plt.close(figure)
    svg = curve_png(frame, ARMS, "study", test_counts=counts, fmt="svg").decode()
    assert label.replace("'", "&#x27;") in svg or label in svg


def test_results_table_and_html_show_the_test_split_counts(frame):
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(console_table(summary_table(frame, ARMS), "study", THIN))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "study: test accuracy (mean ± std over seeds)" in text and "all (1,257)" in text
    assert "test split: 143 images (glioma 82, meningioma 9, notumor 0, pituitary 52)" in text
    page = report_html(frame, ARMS, "study", "dataset digits", test_counts=THIN).decode()
    assert "test split: 143 images (glioma 82, meningioma 9, notumor 0, pituitary 52)" in page
