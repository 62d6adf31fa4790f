"""The console all commands print to, and progress that also reads well in a log file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: (step, advance, total or None, description) -> None
Advance = Callable[..., None]


def make_console() -> Console:
    """Rich console; piped output (CI logs, files) gets 140 columns instead of rich's 80."""
    probe = Console()
    return Console(soft_wrap=True, width=None if probe.is_terminal else 140)


class Milestones:
    """Progress as plain lines for output that is not a terminal (a job log, a file), where a
    live bar shows nothing until it ends: a line every ``share`` of the total or ``seconds``.

        steps = Milestones(console, share=0.05, seconds=30)
        steps("sweep", 1, 63, "ssl-linear/1/0: 0.712")
    """

    def __init__(self, console: Console, share: float = 0.05, seconds: float = 30.0) -> None:
        self.console, self.share, self.seconds = console, share, seconds
        self.done: dict[str, int] = {}
        self.said: dict[str, tuple[float, float]] = {}  # step -> (share said, when)
        self.started = time.monotonic()

    def __call__(self, step: str, n: int = 1, total: int | None = None, description: str = "") -> None:
        done = self.done[step] = self.done.get(step, 0) + n
        now = time.monotonic()
        said_share, said_at = self.said.get(step, (0.0, self.started))
        share = done / total if total else 0.0
        if (total and (share >= said_share + self.share or done == total)) or now - said_at >= self.seconds:
            self.said[step] = (share, now)
            count = f"{done}/{total} ({share:.0%})" if total else f"{done}"
            elapsed = f"{now - self.started:.0f} s"
            self.console.print(
                f"{step}: {count}, {elapsed}" + (f"  {description}" if description else ""), markup=False
            )


@contextmanager
def progress_bars(console: Console, label: str, transient: bool = False) -> Iterator[Advance]:
    """``advance(step, n, total, description)``: rich bars on a terminal, :class:`Milestones` elsewhere."""
    if not console.is_terminal:
        yield Milestones(console)
        return
    columns = [TextColumn(label + "{task.fields[step]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    columns.append(TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=transient) as bars:
        tasks: dict[str, int] = {}

        def advance(step: str, n: int = 1, total: int | None = None, description: str = "") -> None:
            if step not in tasks:
                tasks[step] = bars.add_task(description, total=total, step=step)
            bars.update(tasks[step], advance=n, description=description)

        yield advance
