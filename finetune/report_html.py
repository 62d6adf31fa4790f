"""report.html: a study's curve and table in one self-contained file, with nothing fetched when viewed.

The chart is an SVG drawn here plus a few lines of inline script for the hover tooltips, so the page
opens the same from an MLflow artifact view, a mail attachment or a machine without network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.ticker import MaxNLocator

from finetune.report import (
    ArmStyle,
    arm_styles,
    band_caption,
    budget_label,
    budget_ticks,
    seed_stats,
    summary_table,
    test_split_caption,
)

Forecast = Mapping[str, Sequence[tuple[float, float]]]  # arm -> [(labels per class, predicted accuracy)]

WIDTH, HEIGHT = 980, 510
LEFT, RIGHT, TOP, BOTTOM = 70, 720, 20, 450  # the plot box, in SVG pixels; the legend sits right of it
LEGEND_X = 745
# matplotlib marker -> (corners, angle of the first corner in degrees); "o" is a circle
POLYGONS = {"s": (4, 45), "^": (3, 90), "D": (4, 0), "v": (3, -90), "p": (5, 90), "h": (6, 90), ">": (3, 0)}

STYLE = """
body { font-family: system-ui, sans-serif; color: #222; margin: 2rem; max-width: 1000px; }
h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
.subtitle, .caption, caption { color: #555; }
.subtitle { margin-top: 0; }
svg text { font-size: 12px; fill: #222; }
.frame { fill: none; stroke: #888; }
.grid { stroke: #e3e3e3; }
.point { cursor: pointer; stroke: #fff; stroke-width: 1; }
.point:focus { outline: none; stroke: #000; stroke-width: 2; }
.forecast { fill: none; stroke-width: 1; stroke-opacity: 0.7; }
.forecast-point { fill: #fff; }
#tooltip { position: absolute; white-space: pre; pointer-events: none; background: #fff; border: 1px solid #888;
  padding: 0.4rem 0.6rem; font-size: 13px; box-shadow: 0 2px 6px rgba(0, 0, 0, 0.15); }
table { border-collapse: collapse; margin-top: 1rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.7rem; text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; padding-bottom: 0.3rem; }
"""

SCRIPT = """
const tip = document.getElementById("tooltip");
function show(point) {
  const box = point.getBoundingClientRect();
  tip.textContent = point.getAttribute("aria-label");
  tip.style.left = `${box.right + window.scrollX + 8}px`;
  tip.style.top = `${box.top + window.scrollY - 8}px`;
  tip.hidden = false;
}
for (const point of document.querySelectorAll(".point")) {
  point.addEventListener("mouseenter", () => show(point));
  point.addEventListener("focus", () => show(point));
  point.addEventListener("mouseleave", () => { tip.hidden = true; });
  point.addEventListener("blur", () => { tip.hidden = true; });
}
"""


@dataclass(frozen=True)
class _Scale:
    """Data to SVG pixels: log10 on x (labels per class), linear on y (accuracy)."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def x(self, value: float) -> float:
        return LEFT + math.log10(value / self.x_lo) / math.log10(self.x_hi / self.x_lo) * (RIGHT - LEFT)

    def y(self, value: float) -> float:
        return BOTTOM - (value - self.y_lo) / (self.y_hi - self.y_lo) * (BOTTOM - TOP)

    def xy(self, x: float, y: float) -> str:
        return f"{self.x(x):.1f},{self.y(y):.1f}"


def _e(text: object) -> str:
    return html.escape(str(text))


def _scale(frame: pd.DataFrame, forecast: Forecast) -> tuple[_Scale, list[float]]:
    """A domain that holds every run and forecast point, y on round ticks within 0..1 (returned with them)."""
    xs = [*frame.labels_per_class, *(x for points in forecast.values() for x, _ in points)]
    ys = [*frame.accuracy, *(y for points in forecast.values() for _, y in points)]
    ticks = MaxNLocator(nbins=6, steps=[1, 2, 5, 10]).tick_values(min(ys) - 0.005, max(ys) + 0.005)
    low, high = max(float(ticks[0]), 0.0), min(float(ticks[-1]), 1.0)
    y_ticks = [float(t) for t in ticks if low - 1e-9 <= t <= high + 1e-9]
    return _Scale(min(xs) / 1.3, max(xs) * 1.3, low, high), y_ticks


def _dasharray(style: ArmStyle, width: float) -> str:
    """matplotlib scales dashes by the line width; so does this, so the HTML looks like the PNG."""
    return " ".join(f"{d * width:g}" for d in style.dashes) or "none"


def _marker(marker: str, cx: float, cy: float, r: float = 5.5) -> str:
    if marker not in POLYGONS:
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r * 0.85:.1f}"/>'
    corners, start = POLYGONS[marker]
    angles = [math.radians(start + 360 * k / corners) for k in range(corners)]
    points = " ".join(f"{cx + r * math.cos(a):.1f},{cy - r * math.sin(a):.1f}" for a in angles)
    return f'<polygon points="{points}"/>'


def _axes(scale: _Scale, x_ticks: list[tuple[float, str]], y_ticks: list[float]) -> list[str]:
    """Grid, ticks at the measured budgets and round accuracies, and the axis titles."""
    parts = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}"/>']
    for x, label in x_ticks:
        px = scale.x(x)
        parts.append(f'<line class="grid" x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{BOTTOM}"/>')
        parts.append(f'<text class="tick" x="{px:.1f}" y="{BOTTOM + 18}" text-anchor="middle">{_e(label)}</text>')
    for y in y_ticks:
        py = scale.y(y)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{py:.1f}" x2="{RIGHT}" y2="{py:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 8}" y="{py + 4:.1f}" text-anchor="end">{y:g}</text>')
    parts.append(
        f'<text x="{(LEFT + RIGHT) / 2}" y="{BOTTOM + 44}" text-anchor="middle">labels per class (log scale)</text>'
    )
    parts.append(
        f'<text transform="translate(20 {(TOP + BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
        "test accuracy (line: mean over seeds)</text>"
    )
    return parts


def _tip(arm: str, label: str, runs: pd.DataFrame) -> str:
    """The hover text of one measured point: every seed's accuracy, then their mean."""
    seeds = [f"seed {seed}: {accuracy:.3f}" for seed, accuracy in zip(runs.seed, runs.accuracy, strict=True)]
    return "\n".join([f"{arm} · {label} labels per class", *seeds, f"mean: {runs.accuracy.mean():.3f}"])


def _arm(arm: str, style: ArmStyle, runs: pd.DataFrame, scale: _Scale) -> tuple[str, str, list[str]]:
    """One arm's band (min..max over seeds), mean line, and hoverable points."""
    stats = seed_stats(runs).loc[arm]
    edge = [scale.xy(x, y) for x, y in zip(stats.index, stats["min"], strict=True)]
    edge += [scale.xy(x, y) for x, y in zip(stats.index[::-1], stats["max"][::-1], strict=True)]
    band = f'<polygon class="band" points="{" ".join(edge)}" fill="{style.color}" fill-opacity="0.15"/>'
    line = (
        f'<polyline class="mean" points="{" ".join(scale.xy(x, y) for x, y in stats["mean"].items())}" fill="none" '
        f'stroke="{style.color}" stroke-width="2" stroke-dasharray="{_dasharray(style, 2)}"/>'
    )
    points = []
    for x, part in runs.groupby("labels_per_class"):
        label = budget_label(part.budget.iloc[0], int(part.n_labels.max()))
        points.append(
            f'<g class="point" tabindex="0" data-arm="{_e(arm)}" data-budget="{_e(label)}" '
            f'aria-label="{_e(_tip(arm, label, part))}" fill="{style.color}">'
            f"{_marker(style.marker, scale.x(x), scale.y(stats.loc[x, 'mean']))}</g>"
        )
    return band, line, points


def _forecast(arm: str, style: ArmStyle, points: Sequence[tuple[float, float]], scale: _Scale) -> list[str]:
    """A thin line through the predicted points, each hoverable, hollow so it reads as not measured."""
    parts = [
        f'<polyline class="forecast" points="{" ".join(scale.xy(x, y) for x, y in points)}" stroke="{style.color}"/>'
    ]
    for x, y in points:
        tip = f"{arm} · forecast\n{x:g} labels per class: {y:.3f}"
        parts.append(
            f'<g class="point forecast-point" tabindex="0" data-arm="{_e(arm)}" aria-label="{_e(tip)}" '
            f'style="stroke: {style.color}"><circle cx="{scale.x(x):.1f}" cy="{scale.y(y):.1f}" r="3.5"/></g>'
        )
    return parts


def _legend(styles: dict[str, ArmStyle], band: str, forecast: bool) -> list[str]:
    """Right of the plot: each arm's line and marker, what the band is, and the forecast's look."""
    parts, y = [], TOP + 12
    for arm, style in styles.items():
        parts.append(
            f'<line x1="{LEGEND_X}" y1="{y}" x2="{LEGEND_X + 36}" y2="{y}" stroke="{style.color}" stroke-width="2" '
            f'stroke-dasharray="{_dasharray(style, 2)}"/>'
            f'<g fill="{style.color}" stroke="#fff">{_marker(style.marker, LEGEND_X + 18, y)}</g>'
            f'<text x="{LEGEND_X + 46}" y="{y + 4}">{_e(arm)}</text>'
        )
        y += 22
    parts.append(
        f'<rect x="{LEGEND_X}" y="{y - 6}" width="36" height="12" fill="#808080" fill-opacity="0.3"/>'
        f'<text x="{LEGEND_X + 46}" y="{y + 4}">{_e(band)}</text>'
    )
    if forecast:
        y += 22
        parts.append(
            f'<line class="forecast" x1="{LEGEND_X}" y1="{y}" x2="{LEGEND_X + 36}" y2="{y}" stroke="#222"/>'
            f'<text x="{LEGEND_X + 46}" y="{y + 4}">forecast (predicted)</text>'
        )
    return parts


def chart_svg(frame: pd.DataFrame, arms: list[str], forecast: Forecast | None = None) -> str:
    """The curve as inline SVG: x ticks at the measured budgets (log x), bands, hoverable points, legend."""
    forecast = forecast or {}
    scale, y_ticks = _scale(frame, forecast)
    styles = arm_styles(frame, arms)
    bands, lines, points = [], [], []
    for arm, style in styles.items():
        band, line, arm_points = _arm(arm, style, frame[frame.arm == arm], scale)
        bands.append(band)
        lines.append(line)
        points += arm_points
    predicted = [
        part for arm, pts in forecast.items() if arm in styles for part in _forecast(arm, styles[arm], pts, scale)
    ]
    body = [
        *_axes(scale, budget_ticks(frame), y_ticks),
        *bands,
        *lines,
        *predicted,
        *points,
        *_legend(styles, band_caption(frame), bool(predicted)),
    ]
    return (
        f'<svg id="curve" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="test accuracy vs labels per class">{"".join(body)}</svg>'
    )


def table_html(table: pd.DataFrame) -> str:
    """The console's summary table (rows: budgets, columns: arms, cells: mean ± std) as an HTML table."""
    head = "".join(f'<th scope="col">{_e(arm)}</th>' for arm in table.columns)
    rows = "".join(
        f'<tr><th scope="row">{_e(label)}</th>'
        + "".join(f"<td>{'–' if pd.isna(cell) else _e(cell)}</td>" for cell in row)
        + "</tr>"
        for label, row in zip(table.index, table.itertuples(index=False), strict=True)
    )
    return (
        '<table id="results"><caption>test accuracy, mean ± std over seeds</caption>'
        f'<thead><tr><th scope="col">labels per class</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
    )


def levers_html(levers: pd.DataFrame) -> str:
    """The lever table of ``labelcurve predict`` (:func:`finetune.levers.lever_table`) as an HTML table."""

    def count(value: float) -> str:
        return "∞" if not math.isfinite(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"

    rows = []
    for row in levers.itertuples():
        if row.note:
            cells = [row.lever, row.arm, f"no forecast: {row.note}", ""]
        else:
            labels = f"{count(row.labels)} [{count(row.labels_low)}, {count(row.labels_high)}]"
            if not pd.isna(row.reached_at):
                labels += f" (reached at {count(row.reached_at)})"
            ratio = "" if pd.isna(row.multiplier) else f"{count(row.multiplier)}x"
            if ratio and math.isfinite(row.multiplier):
                ratio += f" [{count(row.multiplier_low)}, {count(row.multiplier_high)}]"
            cells = [row.lever, row.arm, labels, ratio]
        rows.append("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in cells) + "</tr>")
    head = "".join(f'<th scope="col">{c}</th>' for c in ["lever", "arm", "labels needed", "x fewer than scratch"])
    return (
        '<table id="levers"><caption>levers: labels needed for the target (80% intervals), and how many labels '
        f"scratch needs per label of each</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def report_html(
    frame: pd.DataFrame,
    arms: list[str],
    title: str,
    subtitle: str,
    forecast: Forecast | None = None,
    levers: pd.DataFrame | None = None,
    test_counts: Mapping[str, int] | None = None,
) -> bytes:
    """The whole page as UTF-8 bytes: title, chart, caption and table, all text escaped, nothing external.

    ``forecast`` maps an arm to predicted (labels per class, accuracy) points, drawn as a thin line;
    arms without runs in ``frame`` are left out; ``levers``, from ``labelcurve predict``, adds its table.
    ``test_counts`` (images per class of the test split) says what every accuracy was measured on.
    """
    caption = (
        f"Lines: mean test accuracy over seeds at each measured budget. Shaded {band_caption(frame)}. "
        "'all (N)' is the whole labeled pool, N labels in all. "
        "Hover over or tab to a point to see each seed's accuracy."
    )
    page = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f'<h1>{_e(title)}</h1><p class="subtitle">{_e(subtitle)}</p>',
        chart_svg(frame, arms, forecast),
        f'<p class="caption">{_e(caption)}</p>',
        f'<p class="caption" id="test-split">{_e(test_split_caption(test_counts))}</p>' if test_counts else "",
        table_html(summary_table(frame, arms)),
        levers_html(levers) if levers is not None else "",
        f'<div id="tooltip" role="tooltip" hidden></div><script>{SCRIPT}</script></body></html>\n',
    ]
    return "".join(page).encode()
