"""The console all commands print to."""

from rich.console import Console


def make_console() -> Console:
    """Rich console; piped output (CI logs, files) gets 140 columns instead of rich's 80."""
    probe = Console()
    return Console(soft_wrap=True, width=None if probe.is_terminal else 140)
