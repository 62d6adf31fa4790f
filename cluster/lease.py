"""One driver per study: a lease kept as a tag on the study's MLflow experiment.

Two drivers on one study would both run everything (duplicated runs, two pretrainings writing
one Ray Train folder). The lease sits on the experiment, not on the study run: the study run is
keyed on the config and on the digest of the data's manifest, which takes a listing of the data
(minutes on a large folder) and then decoding; the experiment needs only the study's name, so a
second driver is refused before it reads a file. One driver per study name, not per config, also
because configs that differ only in fine-tuning share one pretraining (one Ray Train run name:
:meth:`cluster.config.StudyConfig.pretraining_fingerprint`) that two drivers would train into one
folder at once. A variant runs beside a study under another name (``study=NAME``).

The holder writes tag ``labelcurve.lease`` (holder, host, pid, since, heartbeat; visible in the
UI) and a daemon thread refreshes the heartbeat. Another driver refuses to start while the
heartbeat is fresh, and takes over a lease whose heartbeat is stale or whose process is gone. A
holder that cannot renew its heartbeat for as long as the stale limit, or finds its lease taken
over, stops: another driver may now run the study. It interrupts the main thread (the
KeyboardInterrupt that Ray's blocking calls honour) and the study ends with :class:`LeaseLost`.
Ages compare clocks of different hosts: they must be roughly in sync (NTP).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cluster.tracking import StudyTracker
from cluster.tracking_server import TrackingError, check_tracking_server, store_exists
from pretrain.run_log import bound_http_retries

LEASE = "labelcurve.lease"  # the experiment tag: JSON of holder, host, pid, since, heartbeat
HEARTBEAT_S = 10.0  # how often the holder refreshes its heartbeat
STALE_S = 60.0  # a heartbeat older than this belongs to a driver that is gone: its lease is taken over
SETTLE_S = 1.0  # between writing the lease and reading it back, so that a concurrent taker's write lands first
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


class LeaseHeld(TrackingError):
    """Another live driver holds the study."""


class LeaseLost(TrackingError):
    """This driver's lease could not be renewed, or was taken over: it must stop."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Holder:
    """A lease as read back from the experiment's tag."""

    token: str
    host: str
    pid: int
    since: str
    heartbeat: datetime

    @classmethod
    def of(cls, tags: dict[str, str]) -> Holder | None:
        if LEASE not in tags:
            return None
        try:
            fields = json.loads(tags[LEASE])
            heartbeat = datetime.fromisoformat(fields["heartbeat"])
            return cls(str(fields["holder"]), str(fields["host"]), int(fields["pid"]), str(fields["since"]), heartbeat)
        except (ValueError, KeyError, TypeError):  # edited by hand: treated as a driver that is gone
            return cls("?", "?", 0, "?", _EPOCH)

    def tag(self) -> str:
        fields = {"holder": self.token, "host": self.host, "pid": self.pid, "since": self.since}
        return json.dumps({**fields, "heartbeat": self.heartbeat.isoformat(timespec="seconds")})

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


def close_abandoned(tracker: StudyTracker, keep: str, say: Callable[[str], None]) -> list[str]:
    """Mark KILLED the study runs (and their unfinished child runs) other than ``keep`` left
    RUNNING. Called by the lease's holder: a live driver of this study would hold the lease, so
    such runs belong to drivers that were killed and could not close them. Without this the UI
    shows a study of another config, or of older data, as running forever."""
    closed = []
    for run in tracker.running_studies():
        run_id = run.info.run_id
        if run_id == keep:
            continue
        for child in (*tracker.running_children(run_id), run):
            tracker.finish(child.info.run_id, "KILLED")
        say(f"study run {run_id} was left RUNNING by a driver that is gone: marked KILLED")
        closed.append(run_id)
    return closed


def _experiment_id(uri: str, study: str) -> str:
    """The study's experiment, created if new; two drivers may create it at once."""
    try:
        return StudyTracker(uri, study).experiment_id
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return StudyTracker(uri, study).experiment_id  # the other driver's


class StudyLease:
    """The lease of study ``study``: :meth:`take` it before any work, :meth:`release` it when
    the study ends, however it ends; :func:`study_lease` does both around a block."""

    def __init__(
        self,
        uri: str,
        study: str,
        say: Callable[[str], None] = print,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        bound_http_retries()  # a heartbeat request gives up in seconds, so the stale limit is kept
        self.experiment_id = _experiment_id(uri, study)
        self.client = MlflowClient(uri)  # not patient: a heartbeat that fails is retried at the next beat
        self.study, self.say = study, say
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.since = ""
        self.lost: str | None = None  # why this driver must stop, once it must
        self._wake: int | None = None  # the signal that interrupts the main thread (_wake_signal)
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    def holder(self) -> Holder | None:
        return Holder.of(self.client.get_experiment(self.experiment_id).tags)

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
        self._wake = _wake_signal()
        self._beats = threading.Thread(target=self._beat, name="labelcurve-lease", daemon=True)
        self._beats.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, unless another driver has taken it over. With
        the server unreachable the lease stays behind, goes stale and is taken over."""
        self._stop.set()
        if self._beats is not None:
            self._beats.join()
        if self._wake == signal.SIGUSR2:
            signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        with suppress(MlflowException):
            current = self.holder()
            if current is not None and current.token == self.token:
                self.client.delete_experiment_tag(self.experiment_id, LEASE)

    def _refusal(self, holder: Holder) -> str:
        return (
            f"study '{self.study}' is being run by pid {holder.pid} on host {holder.host} since {holder.since} "
            f"(heartbeat {max(0.0, holder.age_s()):.0f} s ago): wait for it or stop it; "
            f"a lease older than {self.stale_s:.0f} s is taken over"
        )

    def _write(self) -> None:
        mine = Holder(self.token, self.host, self.pid, self.since, _now())
        try:
            self.client.set_experiment_tag(self.experiment_id, LEASE, mine.tag())
        except MlflowException as error:
            if "UNIQUE constraint" not in str(error):
                raise
            # another taker inserted the tag at the same instant (a SQLite store inserts a new key):
            # write again, now over it; the read-back after SETTLE_S says which of us holds it
            self.client.set_experiment_tag(self.experiment_id, LEASE, mine.tag())

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.holder()
                if current is not None and current.token != self.token:
                    return self._lose(
                        f"lease: study '{self.study}' was taken over by pid {current.pid} on host {current.host}: "
                        "this driver stops so that only one runs it"
                    )
                self._write()
                renewed = time.monotonic()
            except Exception as error:  # the server is down or slow: beat again, up to the stale limit
                if time.monotonic() - renewed >= self.stale_s:
                    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
                    return self._lose(
                        f"lease: the heartbeat of study '{self.study}' could not be written for {self.stale_s:.0f} s "
                        f"({reason}), so another driver may take the study over: this driver stops; "
                        "run the same command again to resume"
                    )

    def _lose(self, why: str) -> None:
        """Stop the driver: the flag says why, the interrupt wakes a main thread inside a blocking call."""
        self.lost = why
        if not self._stop.is_set() and self._wake is not None:  # not once released: the study has ended
            # a real signal, not _thread.interrupt_main: only a signal cuts a blocking call short
            os.kill(os.getpid(), self._wake)


def _wake_signal() -> int | None:
    """The signal that wakes the main thread with KeyboardInterrupt when the lease is lost: SIGINT
    where Python handles it. Where SIGINT is ignored (a driver started with nohup or as a shell's
    background job), it would do nothing, so SIGUSR2 gets Python's interrupt handler
    for as long as the lease is held. ``None`` off the main thread: the block checks the flag."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if callable(signal.getsignal(signal.SIGINT)):
        return signal.SIGINT
    signal.signal(signal.SIGUSR2, signal.default_int_handler)
    return signal.SIGUSR2


_held: dict[tuple[str, str], StudyLease] = {}  # the leases this process holds, by (tracking URI, study)


@contextmanager
def study_lease(
    uri: str,
    study: str,
    say: Callable[[str], None] = print,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
) -> Iterator[StudyLease]:
    """Hold the study's lease for the block: taken here unless this process holds it already
    (the CLI takes it before listing the data, :func:`cluster.study.run_study` around its work).
    A block that ends after the lease was lost (interrupted, or failing for want of the server)
    ends with :class:`LeaseLost`, the one line saying why."""
    key = (uri, study)
    if key in _held:
        yield _held[key]
        return
    lease = StudyLease(uri, study, say, heartbeat_s, stale_s).take()
    _held[key] = lease
    try:
        yield lease
        check_lease()  # a block that ended before the interrupt arrived
    except BaseException:
        if lease.lost:
            raise LeaseLost(lease.lost) from None
        raise
    finally:
        del _held[key]
        lease.release()


def check_lease() -> None:
    """Raise :class:`LeaseLost` when a lease this process holds was lost. For where the
    interrupt may have been absorbed: Ray Tune ends a training run gracefully on the first one."""
    for lease in _held.values():
        if lease.lost:
            raise LeaseLost(lease.lost)


def existing_study_lease(uri: str, study: str, say: Callable[[str], None] = print) -> AbstractContextManager:
    """:func:`study_lease` for a study already in the store, taken before its data is read;
    nothing for a new study (no lease to be refused by, and a mistyped input creates no store)."""
    check_tracking_server(uri)
    if not store_exists(uri) or MlflowClient(uri).get_experiment_by_name(study) is None:
        return nullcontext()
    return study_lease(uri, study, say)
