"""The study driver runs in a child process that a small parent watches, to speak for it.

Some deaths leave a process no chance to say anything: Ray ends a driver whose raylet died with
a C++ ``_exit`` (no exception, no ``atexit``), and ``kill -9`` or the kernel's OOM killer stop it
outright. The parent holds no Ray, no model and no data, survives them, and prints one line with
the command that resumes the study (finished runs are recorded and are skipped).

The child has its own process group, so that a terminal's Ctrl+C reaches it once, through the
parent, which passes on SIGINT, SIGTERM, SIGHUP and SIGQUIT, and stops and continues it with
itself (Ctrl+Z, ``fg``). On Linux the child dies with the parent (``PR_SET_PDEATHSIG``), so that
``kill -9`` of the command a user started still stops the study. A Ray job's entrypoint is not
watched: Ray's job supervisor signals every process of the job itself and keeps its logs.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
from contextlib import suppress

from cluster.tracking_server import redacted

CHILD_ENV = "LABELCURVE_SUPERVISED"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a job's entrypoint
SPOKEN = {0, 2, 130}  # success, a one-line input error, an interrupt: the child said what happened
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCONT)


def supervised() -> bool:
    """Whether this process needs no watcher: it is the watched child, or a Ray job's entrypoint."""
    return os.environ.get(CHILD_ENV) == "1" or RAY_JOB_ENV in os.environ


def _child_setup(parent: int) -> None:
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)


def _command(argv: list[str]) -> list[str]:
    """This command again; through the installed script where there is one, because ``python -m``
    would put the working directory first on ``sys.path`` (a ``cluster/`` folder there would win)."""
    script = sys.argv[0]
    if os.path.basename(script) == "labelcurve" and os.access(script, os.X_OK):
        return [script, *argv]
    return [sys.executable, "-m", "cluster.cli", *argv]


def run_supervised(argv: list[str]) -> int:
    """Run ``labelcurve ARGV`` in a watched child; its exit code, after one line if it died silently."""
    child: subprocess.Popen | None = None
    early: list[int] = []  # signals that came before the child existed

    def forward(sig: int, _frame) -> None:
        if child is None:
            early.append(sig)
        else:
            child.send_signal(sig)

    def stop(_sig: int, _frame) -> None:  # Ctrl+Z: the child stops too, and continues with us (SIGCONT)
        if child is not None:
            child.send_signal(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, stop)
    parent = os.getpid()
    try:
        child = subprocess.Popen(
            _command(argv), env={**os.environ, CHILD_ENV: "1"}, preexec_fn=lambda: _child_setup(parent)
        )
        for sig in early:
            child.send_signal(sig)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code in SPOKEN:
        return code
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    resume = redacted(shlex.join(["labelcurve", *argv]))  # printed: no credentials of a data URI
    with suppress(OSError):  # a terminal that hung up takes the line with it
        print(
            f"labelcurve: the study driver (pid {child.pid}) {how}: finished runs are recorded; resume with `{resume}`",
            file=sys.stderr,
            flush=True,
        )
    return 128 - code if code < 0 else code
