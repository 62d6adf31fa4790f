"""Two drivers on one study: the lease on its study run, against a real ``mlflow server``."""

from __future__ import annotations

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

from cluster.lease import HEARTBEAT, HOLDER, HOST, PID, SINCE, LeaseHeld, StudyLease, close_abandoned
from cluster.tracking import PRETRAIN, ROLE, STUDY, StudyTracker
from tests.conftest import free_port, mlflow_server

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LEASE_TAGS = {HOLDER, HOST, PID, SINCE, HEARTBEAT}

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
        StudyLease(sys.argv[1], "leased", sys.argv[2], heartbeat_s=0.5).take()
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


def study_run(server: str, fingerprint: str) -> str:
    return StudyTracker(server, "leased").open_parent(fingerprint, "data", {})[0]


def tags(server: str, run_id: str) -> dict[str, str]:
    return MlflowClient(server).get_run(run_id).data.tags


def write_lease(server: str, run_id: str, host: str, pid: int, heartbeat: datetime) -> None:
    stamp = heartbeat.isoformat(timespec="seconds")
    lease = {HOLDER: f"{host}:{pid}:test", HOST: host, PID: str(pid), SINCE: stamp, HEARTBEAT: stamp}
    for key, value in lease.items():
        MlflowClient(server).set_tag(run_id, key, value)


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
    run_id = study_run(server, "race")
    command = [sys.executable, "-c", DRIVER, server, run_id, str(tmp_path / "mlflow.db")]
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
        held = tags(server, run_id)
        assert held[HOLDER].startswith(f"{socket.gethostname()}:{holder.pid}:") and held[PID] == str(holder.pid)

        with pytest.raises(LeaseHeld) as third:
            StudyLease(server, "leased", run_id).take()
        message = str(third.value)
        assert message.startswith(
            f"study 'leased' is being run by pid {holder.pid} on host {socket.gethostname()} since {held[SINCE]} "
        )
        assert message.endswith("s ago): wait for it or stop it; a lease older than 60 s is taken over")
        assert tags(server, run_id)[HOLDER] == held[HOLDER]  # refused takers write nothing

        wait_until(lambda: tags(server, run_id)[HEARTBEAT] > held[HEARTBEAT], 10)  # the holder's heartbeat advances
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()


def test_a_stale_lease_is_taken_over_with_a_line_saying_why(server):
    run_id = study_run(server, "stale")
    said: list[str] = []

    # Another host's driver whose heartbeat stopped five minutes ago.
    write_lease(server, run_id, "elsewhere", 4242, datetime.now(timezone.utc) - timedelta(minutes=5))
    lease = StudyLease(server, "leased", run_id, say=said.append).take()
    (line,) = said
    assert line.startswith("lease: taking over study 'leased' from pid 4242 on host elsewhere (last heartbeat 30")
    assert line.endswith(" s ago)")
    assert tags(server, run_id)[HOLDER] == lease.token and tags(server, run_id)[PID] == str(os.getpid())
    lease.release()

    # A driver on this host whose process is gone: its fresh heartbeat does not matter.
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lease(server, run_id, socket.gethostname(), gone.pid, datetime.now(timezone.utc))
    lease = StudyLease(server, "leased", run_id, say=said.append).take()
    assert said[-1] == f"lease: taking over study 'leased' from pid {gone.pid} on host {socket.gethostname()} " + (
        f"(pid {gone.pid} is no longer running)"
    )
    assert tags(server, run_id)[HOLDER] == lease.token
    lease.release()


def test_release_removes_the_lease(server):
    run_id = study_run(server, "release")
    lease = StudyLease(server, "leased", run_id, heartbeat_s=0.2).take()
    assert set(tags(server, run_id)) >= LEASE_TAGS
    time.sleep(0.5)  # a heartbeat or two in flight
    lease.release()
    assert not LEASE_TAGS & set(tags(server, run_id))
    said: list[str] = []
    StudyLease(server, "leased", run_id, say=said.append).take().release()
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
    write_lease(server, killed, "elsewhere", 4242, datetime.now(timezone.utc) - timedelta(minutes=5))
    in_flight = tracker.start_child(killed, PRETRAIN, "pretrain", "pretrain-simclr", {})
    elsewhere = tracker.open_parent("other-config", "data-1", {})[0]  # another driver, alive, runs it
    write_lease(server, elsewhere, socket.gethostname(), os.getppid(), datetime.now(timezone.utc))
    five_minutes_ago = int((time.time() - 300) * 1000)  # a resumed study run: its driver takes the lease in a moment
    unleased = MlflowClient(server).create_run(tracker.experiment_id, five_minutes_ago, {ROLE: STUDY}).info.run_id
    current = tracker.open_parent("new-data", "data-2", {})[0]
    said: list[str] = []

    assert close_abandoned(tracker, current, said.append) == [killed]
    (line,) = said
    assert line.startswith(f"study run {killed} was left RUNNING by a driver that is gone (last heartbeat 30")
    assert line.endswith(" s ago): marked KILLED")
    assert (status(killed), status(in_flight)) == ("KILLED", "KILLED")
    assert {status(run) for run in (elsewhere, unleased, current)} == {"RUNNING"}
