"""The study driver runs in a child process that a small parent watches, to speak for it.

Some deaths leave a process no chance to say anything: Ray ends a driver whose raylet died with
a C++ ``_exit`` (no exception, no ``atexit``), and ``kill -9`` or the kernel's OOM killer stop it
outright. The parent holds no Ray, no model and no data, survives them, and prints one line with
the command that resumes the study (finished runs are recorded and are skipped). It forwards
Ctrl+C and SIGTERM to the child, which has its own process group so that a terminal's Ctrl+C
reaches it once, and on Linux the child dies with the parent (``PR_SET_PDEATHSIG``), so that
``kill -9`` of the command a user started still stops the study.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys

CHILD_ENV = "LABELCURVE_SUPERVISED"
SPOKEN = {0, 2, 130}  # success, a one-line input error, an interrupt: the child said what happened
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervised() -> bool:
    """Whether this process is the watched child."""
    return os.environ.get(CHILD_ENV) == "1"


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_supervised(argv: list[str]) -> int:
    """Run ``labelcurve ARGV`` in a watched child; its exit code, after one line if it died silently."""
    command = [sys.executable, "-m", "cluster.cli", *argv]
    child = subprocess.Popen(command, env={**os.environ, CHILD_ENV: "1"}, process_group=0, preexec_fn=_die_with_parent)
    previous = {sig: signal.signal(sig, lambda sig, _frame: child.send_signal(sig)) for sig in FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code in SPOKEN:
        return code
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    resume = shlex.join(["labelcurve", *argv])
    print(
        f"labelcurve: the study driver (pid {child.pid}) {how}: finished runs are recorded; resume with `{resume}`",
        file=sys.stderr,
        flush=True,
    )
    return 128 - code if code < 0 else code
