"""Two drivers on one study: the lease on its MLflow experiment, against a real ``mlflow server``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cluster.lease import LEASE, LeaseHeld, LeaseLost, StudyLease, close_abandoned, study_lease
from cluster.tracking import PRETRAIN, STUDY, StudyTracker
from tests.conftest import free_port, mlflow_server

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# A driver in its own process; each step starts when the test says go, for all drivers at once.
DRIVER = textwrap.dedent(
    """
    import sys, time
    from cluster.lease import LeaseHeld, StudyLease
    from cluster.tracking import StudyTracker
    def ready():
        print("ready", flush=True)
        sys.stdin.readline()
    ready()
    StudyTracker(f"sqlite:///{sys.argv[3]}", "fresh")  # a new SQLite store, created by both at once
    ready()
    try:
        StudyLease(sys.argv[1], sys.argv[2], heartbeat_s=0.5).take()
    except LeaseHeld as refused:
        print(refused, flush=True)
        sys.exit(3)
    print("held", flush=True)
    time.sleep(300)
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("lease"), free_port()) as url:
        yield url


def lease_of(server: str, study: str) -> dict | None:
    """The lease tag of ``study``'s experiment, read back."""
    tag = MlflowClient(server).get_experiment_by_name(study).tags.get(LEASE)
    return json.loads(tag) if tag else None


def write_lease(server: str, study: str, host: str, pid: int, heartbeat: datetime) -> None:
    stamp = heartbeat.isoformat(timespec="seconds")
    lease = {"holder": f"{host}:{pid}:test", "host": host, "pid": pid, "since": stamp, "heartbeat": stamp}
    experiment_id = StudyTracker(server, study).experiment_id
    MlflowClient(server).set_experiment_tag(experiment_id, LEASE, json.dumps(lease))


def go_together(processes: list[subprocess.Popen]) -> None:
    """Once every process is ready, tell all of them to go on: they race from the same instant."""
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.communicate()[1][-2000:]
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()


def wait_until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_drivers_starting_at_once_share_a_new_store_and_only_one_runs(server, tmp_path):
    command = [sys.executable, "-c", DRIVER, server, "leased", str(tmp_path / "mlflow.db")]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    drivers = [subprocess.Popen(command, cwd=REPO, text=True, **pipes) for _ in range(2)]
    try:
        go_together(drivers)  # both create the store: without its lock, MLflow's migrations race
        go_together(drivers)  # both store writes done: both take the lease
        wait_until(lambda: any(d.poll() is not None for d in drivers), 60)
        refused = next(d for d in drivers if d.poll() is not None)
        holder = next(d for d in drivers if d is not refused)
        assert refused.returncode == 3, refused.stderr.read()[-2000:]  # and the other one keeps running
        assert holder.poll() is None and holder.stdout.readline().strip() == "held"
        assert f"is being run by pid {holder.pid} on host {socket.gethostname()}" in refused.stdout.read()
        held = lease_of(server, "leased")
        assert held["holder"].startswith(f"{socket.gethostname()}:{holder.pid}:") and held["pid"] == holder.pid

        with pytest.raises(LeaseHeld) as third:
            StudyLease(server, "leased").take()
        message = str(third.value)
        assert message.startswith(
            f"study 'leased' is being run by pid {holder.pid} on host {socket.gethostname()} since {held['since']} "
        )
        assert message.endswith("s ago): wait for it or stop it; a lease older than 60 s is taken over")
        assert lease_of(server, "leased")["holder"] == held["holder"]  # refused takers write nothing

        # the holder's heartbeat advances
        wait_until(lambda: lease_of(server, "leased")["heartbeat"] > held["heartbeat"], 10)
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()


def test_a_stale_lease_is_taken_over_with_a_line_saying_why(server):
    said: list[str] = []

    # Another host's driver whose heartbeat stopped five minutes ago.
    write_lease(server, "stale", "elsewhere", 4242, datetime.now(timezone.utc) - timedelta(minutes=5))
    lease = StudyLease(server, "stale", say=said.append).take()
    (line,) = said
    assert line.startswith("lease: taking over study 'stale' from pid 4242 on host elsewhere (last heartbeat 30")
    assert line.endswith(" s ago)")
    assert lease_of(server, "stale")["holder"] == lease.token and lease_of(server, "stale")["pid"] == os.getpid()
    lease.release()

    # A driver on this host whose process is gone: its fresh heartbeat does not matter.
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lease(server, "stale", socket.gethostname(), gone.pid, datetime.now(timezone.utc))
    lease = StudyLease(server, "stale", say=said.append).take()
    assert said[-1] == f"lease: taking over study 'stale' from pid {gone.pid} on host {socket.gethostname()} " + (
        f"(pid {gone.pid} is no longer running)"
    )
    assert lease_of(server, "stale")["holder"] == lease.token
    lease.release()


def test_release_removes_the_lease(server):
    lease = StudyLease(server, "release", heartbeat_s=0.2).take()
    assert lease_of(server, "release")["holder"] == lease.token
    time.sleep(0.5)  # a heartbeat or two in flight
    lease.release()
    assert lease_of(server, "release") is None
    said: list[str] = []
    StudyLease(server, "release", say=said.append).take().release()
    assert said == []  # nothing to take over


def test_two_drivers_creating_one_new_study_run_at_once_keep_the_same_one(server, monkeypatch):
    first, second = StudyTracker(server, "leased"), StudyTracker(server, "leased")
    created = []
    search = second._search

    def searched_before_the_other_created_it(*conditions):  # the race: both searched, found nothing
        if not created:
            created.append(first.open_parent("together", "data", {})[0])
            return []
        return search(*conditions)

    monkeypatch.setattr(second, "_search", searched_before_the_other_created_it)
    assert second.open_parent("together", "data", {}) == (created[0], False)
    parents = first._search(f"tags.`labelcurve.role` = '{STUDY}'", "tags.`labelcurve.fingerprint` = 'together'")
    assert [run.info.run_id for run in parents] == created  # the second driver's copy is deleted


def test_study_runs_left_running_by_a_killed_driver_are_marked_killed_by_the_next_run(server):
    tracker = StudyTracker(server, "abandoned")
    status = lambda run_id: MlflowClient(server).get_run(run_id).info.status  # noqa: E731
    killed = tracker.open_parent("old-data", "data-1", {})[0]  # its driver was killed mid-pretraining
    in_flight = tracker.start_child(killed, PRETRAIN, "pretrain", "pretrain-simclr", {})
    done = tracker.start_child(killed, PRETRAIN, "pretrain-r1", "pretrain-simclr-r1", {})
    tracker.finish(done)
    finished = tracker.open_parent("other-config", "data-1", {})[0]
    tracker.finish(finished)
    current = tracker.open_parent("new-data", "data-2", {})[0]
    said: list[str] = []

    with study_lease(server, "abandoned", say=said.append):  # no live driver of the study but this one
        assert close_abandoned(tracker, current, said.append) == [killed]
    assert said == [f"study run {killed} was left RUNNING by a driver that is gone: marked KILLED"]
    assert (status(killed), status(in_flight), status(done)) == ("KILLED", "KILLED", "FINISHED")
    assert (status(finished), status(current)) == ("FINISHED", "RUNNING")


def test_a_second_driver_is_refused_before_it_reads_the_data(server, tmp_path):
    """`labelcurve run` on a study another driver holds stops at the lease: a folder of images
    that cannot be decoded, which fails the study as soon as it is read, is never read."""
    for label in ("a", "b"):
        (tmp_path / "corrupt" / label).mkdir(parents=True)
        for i in range(12):
            (tmp_path / "corrupt" / label / f"{i}.png").write_bytes(b"not a png")
    command = [str(BIN / "labelcurve"), "run", "study=held", "data.name=folder", f"data.path={tmp_path / 'corrupt'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "LABELCURVE_SUPERVISED": "1"}
    write_lease(server, "held", "elsewhere", 4242, datetime.now(timezone.utc))  # alive, on another host

    refused = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.startswith("Error: study 'held' is being run by pid 4242 on host elsewhere since ")
    assert "data:" not in refused.stdout + refused.stderr  # nothing listed, nothing decoded
    assert lease_of(server, "held")["holder"] == "elsewhere:4242:test"

    MlflowClient(server).delete_experiment_tag(StudyTracker(server, "held").experiment_id, LEASE)  # the holder ends
    unleased = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert unleased.returncode == 2 and "is being run by" not in unleased.stderr  # the data's own error instead
    assert lease_of(server, "held") is None  # released when the study failed


def test_a_heartbeat_that_cannot_be_written_for_the_stale_limit_stops_the_driver(tmp_path):
    stopping = mlflow_server(tmp_path, free_port())
    url = stopping.__enter__()
    with pytest.raises(LeaseLost) as lost, study_lease(url, "outage", heartbeat_s=0.2, stale_s=2.0):
        stopping.__exit__(None, None, None)  # the tracking server goes away mid-study
        stopped = time.monotonic()
        while time.monotonic() - stopped < 60:  # the driver's work, in Python or in Ray calls
            time.sleep(0.05)
    assert 2.0 <= time.monotonic() - stopped < 30
    message = str(lost.value)
    assert message.startswith("lease: the heartbeat of study 'outage' could not be written for 2 s (")
    assert message.endswith(
        "so another driver may take the study over: this driver stops; run the same command again to resume"
    )
    assert "\n" not in message


def test_a_driver_whose_lease_was_taken_over_stops(server):
    with pytest.raises(LeaseLost) as lost, study_lease(server, "taken", heartbeat_s=0.2):
        write_lease(server, "taken", "elsewhere", 4242, datetime.now(timezone.utc))  # it judged us gone
        time.sleep(30)
    assert str(lost.value) == (
        "lease: study 'taken' was taken over by pid 4242 on host elsewhere: this driver stops so that only one runs it"
    )
    assert lease_of(server, "taken")["holder"] == "elsewhere:4242:test"  # the taker's lease is left alone


def test_a_driver_that_ignores_sigint_still_stops_when_its_lease_is_taken_over(server):
    """nohup and a shell's background jobs start Python with SIGINT ignored: the lost lease must
    still interrupt the main thread (through SIGUSR2 there), not let the driver run on."""
    driver = textwrap.dedent(
        """
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from cluster.lease import LeaseLost, study_lease
        try:
            with study_lease(sys.argv[1], "ignoring", heartbeat_s=0.2):
                print("held", flush=True)
                time.sleep(120)
        except LeaseLost as lost:
            print(lost, flush=True)
            sys.exit(2)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", driver, server], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "held", process.stderr.read()[-2000:]
        started = time.monotonic()
        write_lease(server, "ignoring", "elsewhere", 4242, datetime.now(timezone.utc))
        assert process.wait(timeout=60) == 2
        assert time.monotonic() - started < 30  # interrupted, not the 120 s sleep run out
        assert "was taken over by pid 4242 on host elsewhere" in process.stdout.read()
    finally:
        process.kill()
