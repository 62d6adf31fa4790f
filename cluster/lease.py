"""One driver per study run: a lease kept as tags on the study's parent run in MLflow.

Two drivers on one study would both run everything (duplicated runs, two pretrainings logging
into one run). The driver that opens a study run takes its lease (tags ``labelcurve.lease.*``,
visible in the UI) and a daemon thread refreshes the heartbeat. Another driver refuses to start
while the heartbeat is fresh, and takes over a lease whose heartbeat is stale or whose process is
gone. Ages compare clocks of different hosts: they must be roughly in sync (NTP).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from cluster.tracking import StudyTracker, TrackingError

HOLDER, HOST, PID, SINCE, HEARTBEAT = (
    f"labelcurve.lease.{name}" for name in ("holder", "host", "pid", "since", "heartbeat")
)
HEARTBEAT_S = 10.0  # how often the holder refreshes its heartbeat
STALE_S = 60.0  # a heartbeat older than this belongs to a driver that is gone: its lease is taken over
SETTLE_S = 1.0  # between writing the lease and reading it back, so that a concurrent taker's write lands first


class LeaseHeld(TrackingError):
    """Another live driver holds the study run."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Holder:
    """A lease as read back from the run's tags."""

    token: str
    host: str
    pid: int
    since: str
    heartbeat: datetime

    @classmethod
    def of(cls, tags: dict[str, str]) -> Holder | None:
        if HOLDER not in tags:
            return None
        try:
            pid, heartbeat = int(tags.get(PID, "")), datetime.fromisoformat(tags.get(HEARTBEAT, ""))
        except ValueError:  # edited by hand: treated as a driver that is gone
            pid, heartbeat = 0, datetime.min.replace(tzinfo=timezone.utc)
        return cls(tags[HOLDER], tags.get(HOST, "?"), pid, tags.get(SINCE, "?"), heartbeat)

    def age_s(self) -> float:
        return (_now() - self.heartbeat).total_seconds()

    def gone(self) -> bool:
        """Its process has ended; only knowable on its own host."""
        if self.host != socket.gethostname():
            return False
        if self.pid <= 0:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def stale(self, stale_s: float) -> str | None:
        """Why this lease may be taken over, or None while its driver is alive."""
        if self.host == socket.gethostname() and self.pid == os.getpid():
            return "held by this process"
        if self.gone():
            return f"pid {self.pid} is no longer running"
        if self.age_s() >= stale_s:
            return f"last heartbeat {self.age_s():.0f} s ago"
        return None


def close_abandoned(
    tracker: StudyTracker, keep: str, say: Callable[[str], None], stale_s: float = STALE_S
) -> list[str]:
    """Mark KILLED the study runs (and their unfinished child runs) that a killed driver left
    RUNNING, other than ``keep``. A killed driver cannot remove its lease, so only a RUNNING study
    run with a stale lease is abandoned: one without a lease is being opened by a driver that
    takes it in a moment. Without this the UI shows a study of another config, or of older data,
    as running forever."""
    closed = []
    for run in tracker.running_studies():
        run_id, holder = run.info.run_id, Holder.of(run.data.tags)
        if run_id == keep or holder is None or (reason := holder.stale(stale_s)) is None:
            continue
        if Holder.of(tracker.client.get_run(run_id).data.tags) != holder:  # taken over meanwhile
            continue
        for child in (*tracker.running_children(run_id), run):
            tracker.finish(child.info.run_id, "KILLED")
        say(f"study run {run_id} was left RUNNING by a driver that is gone ({reason}): marked KILLED")
        closed.append(run_id)
    return closed


class StudyLease:
    """The lease of study run ``run_id``: :meth:`take` it before any compute, :meth:`release` it
    when the study ends, however it ends."""

    def __init__(
        self,
        uri: str,
        study: str,
        run_id: str,
        say: Callable[[str], None] = print,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        self.client = MlflowClient(uri)  # not patient: a heartbeat that fails is retried at the next beat
        self.study, self.run_id, self.say = study, run_id, say
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.since = ""
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    def holder(self) -> Holder | None:
        return Holder.of(self.client.get_run(self.run_id).data.tags)

    def take(self) -> StudyLease:
        """Hold the lease or raise :class:`LeaseHeld`; a stale lease is taken over, with a line saying so."""
        current = self.holder()
        if current is not None:
            reason = current.stale(self.stale_s)
            if reason is None:
                raise LeaseHeld(self._refusal(current))
            self.say(
                f"lease: taking over study '{self.study}' from pid {current.pid} on host {current.host} ({reason})"
            )
        self.since = _now().isoformat(timespec="seconds")
        self._write()
        time.sleep(SETTLE_S)  # MLflow has no compare-and-set: the last writer wins, and every taker checks
        winner = self.holder()
        if winner is not None and winner.token != self.token:
            raise LeaseHeld(self._refusal(winner))
        self._beats = threading.Thread(target=self._beat, name="labelcurve-lease", daemon=True)
        self._beats.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, unless another driver has taken it over. With
        the server unreachable the lease stays behind, goes stale and is taken over."""
        self._stop.set()
        if self._beats is not None:
            self._beats.join()
        with suppress(MlflowException):
            current = self.holder()
            if current is not None and current.token == self.token:
                for key in (HOLDER, HOST, PID, SINCE, HEARTBEAT):
                    self.client.delete_tag(self.run_id, key)

    def _refusal(self, holder: Holder) -> str:
        return (
            f"study '{self.study}' is being run by pid {holder.pid} on host {holder.host} since {holder.since} "
            f"(heartbeat {max(0.0, holder.age_s()):.0f} s ago): wait for it or stop it; "
            f"a lease older than {self.stale_s:.0f} s is taken over"
        )

    def _write(self) -> None:
        tags = {HOLDER: self.token, HOST: self.host, PID: str(self.pid), SINCE: self.since}
        tags[HEARTBEAT] = _now().isoformat(timespec="seconds")
        self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.holder()
                if current is not None and current.token != self.token:
                    self.say(
                        f"lease: study '{self.study}' was taken over by pid {current.pid} on host {current.host}: "
                        "two drivers now run it; stop one"
                    )
                    return
                self._write()
            except Exception:  # the server is down or slow: beat again next time, never end the thread
                continue
