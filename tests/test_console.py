"""Progress in a log file: a line every few percent (or every 30 s), not one bar at the end."""

from __future__ import annotations

import io

from rich.console import Console

from cluster.console import Milestones, progress_bars


def test_progress_written_to_a_file_is_a_line_every_five_percent():
    out = io.StringIO()
    console = Console(file=out, width=140)
    assert not console.is_terminal
    with progress_bars(console, "") as advance:
        for i in range(63):
            advance("sweep", 1, 63, f"run {i}")
    lines = out.getvalue().splitlines()
    assert 15 <= len(lines) <= 21, lines  # about one per 5%, never one per run
    assert lines[0].startswith("sweep: 4/63 (6%), ") and lines[0].endswith("run 3")
    assert lines[-1].startswith("sweep: 63/63 (100%), ")


def test_a_step_without_a_total_reports_every_interval():
    out = io.StringIO()
    steps = Milestones(Console(file=out, width=140), seconds=0.0)
    steps("listing", 500)
    steps("listing", 250)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["listing: 500", "listing: 750"]
