"""A study driver that dies without a word (its raylet killed, so Ray ends it with a C++ exit)
still leaves one line with the command that resumes it, and that command resumes the study."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tests.test_study_e2e import TINY

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, by pid, with its command name."""
    parents, names = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(proc.name)] = int(fields[1])
                names[int(proc.name)] = (proc / "comm").read_text().strip()
            except (OSError, IndexError):
                continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = names[child]
                frontier.append(child)
    return found


def test_a_driver_whose_raylet_dies_prints_the_resume_command(tmp_path):
    args = ["study=tiny", *[a for a in TINY if not a.startswith("pretrain.epochs=")], "pretrain.epochs=3"]
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([str(BIN / "labelcurve"), "run", *args], cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 300
        while "pretrain epoch 1/3" not in log.read_text():
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "pretraining did not start"
            time.sleep(0.5)
        (raylet,) = [pid for pid, name in descendants(driver.pid).items() if name == "raylet"]
        subprocess.run(["kill", "-9", str(raylet)], check=True)
        code = driver.wait(timeout=120)
    finally:
        driver.kill()
    output = log.read_text()
    last = output.strip().splitlines()[-1]
    assert code not in (0, 2, 130), output[-3000:]
    assert last.startswith("labelcurve: the study driver (pid "), output[-3000:]
    assert last.endswith(f"finished runs are recorded; resume with `{shlex.join(['labelcurve', 'run', *args])}`")

    resumed = subprocess.run(
        [str(BIN / "labelcurve"), "run", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resumed)" in resumed.stdout and "labels/class" in resumed.stdout


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_of_the_command_a_user_started_stops_the_study(tmp_path):
    """SIGKILL reaches only the process it is sent to: the watched driver must die with it."""
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [str(BIN / "labelcurve"), "run", "study=tiny", *TINY], cwd=tmp_path, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 120
    while not (watched := [pid for pid, name in descendants(driver.pid).items() if name.startswith("python")]):
        assert time.monotonic() < deadline and driver.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    try:
        deadline = time.monotonic() + 10
        while alive(watched[0]):
            assert time.monotonic() < deadline, "the study driver outlived the killed command"
            time.sleep(0.1)
    finally:
        with suppress(ProcessLookupError):
            os.kill(watched[0], signal.SIGKILL)
