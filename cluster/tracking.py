"""MLflow tracking for a study: one experiment per study name, a parent run, child runs.

Runs are found again by tags, which is what makes a study resumable: a re-run with the same
config fingerprint reopens the parent run, skips FINISHED children and reuses unfinished ones.

A tracking server that stops answering costs about a minute, not MLflow's default of about four
minutes per request: MLflow's own retries are cut to seconds (:data:`pretrain.run_log.HTTP_BOUNDS`) and
:class:`PatientClient` waits out an outage for up to :data:`OUTAGE_S`, saying so once.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from cluster.provenance import source_tags
from cluster.tracking_server import (
    TrackingError,
    check_lookup,
    check_tracking_server,
    redacted,
    runs_url,
    tracking_uri,
)
from pretrain.run_log import bound_http_retries, unreachable

ROLE, FINGERPRINT, RUN_KEY = "labelcurve.role", "labelcurve.fingerprint", "labelcurve.run_key"
N_CLASSES, DATA, BUDGET = "labelcurve.n_classes", "labelcurve.data_digest", "labelcurve.budget"
PRETRAINING = "labelcurve.pretraining"  # on pretraining runs and model versions: StudyConfig.pretraining_fingerprint
POOL_SIZE = "labelcurve.pool_size"  # labeled pool images: the backtest's default cut is a share of it
TEST_COUNTS = "labelcurve.test_counts"  # JSON {class: test images}: forecasts read the majority-class rate
STUDY, PRETRAIN, FINETUNE = "study", "pretrain", "finetune"
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
__all__ = ["StudyTracker", "TrackingError", "check_tracking_server", "redacted", "tracking_uri"]

OUTAGE_S = 60.0  # how long a call waits for an unreachable tracking server before the driver gives up
OUTAGE_ENV = "LABELCURVE_OUTAGE_S"  # another wait, in seconds: for tests of an outage
RETRY_EVERY_S = 5.0


class TrackingUnreachable(TrackingError):
    """The tracking server did not answer for the whole outage wait."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PatientClient:
    """An ``MlflowClient`` whose calls wait out a tracking server outage: retried for up to
    ``patience_s`` after the first failure, said once, then one :class:`TrackingUnreachable`
    instead of minutes of silent retries and a traceback."""

    def __init__(self, client: MlflowClient, uri: str, say: Callable[[str], None], patience_s: float) -> None:
        self._client, self._uri, self._say, self._patience_s = client, uri, say, patience_s

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patient(*args, **kwargs):
            return self._call(attribute, *args, **kwargs)

        return patient

    def _call(self, method: Callable, *args, **kwargs):
        deadline = None
        while True:
            try:
                return method(*args, **kwargs)
            except Exception as error:
                if not unreachable(error):
                    raise
                now, server = time.monotonic(), redacted(self._uri)
                if deadline is None:
                    deadline = now + self._patience_s
                    self._say(f"tracking server {server} unreachable, retrying for up to {self._patience_s:.0f} s")
                elif now >= deadline:
                    raise TrackingUnreachable(
                        f"tracking server {server} unreachable for {self._patience_s:.0f} s"
                    ) from None
                time.sleep(min(RETRY_EVERY_S, deadline - now))


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """Hold a lock file beside a SQLite store while it may be created: MLflow's schema
    migrations fail ("table already exists") when two processes create one store at once."""
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if not uri.startswith("sqlite:///") or not path.parent.is_dir():
        yield
        return
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _params(values: dict) -> list[Param]:
    """Run params as MLflow takes them: strings within its length limit, the credentials of any
    URI in them (``data.path=s3://KEY:SECRET@bucket``) masked, since everyone who reads the store sees them."""
    return [Param(key, redacted(str(value))[:6000]) for key, value in values.items()]


def outage_s() -> float:
    """The outage wait: :data:`OUTAGE_S`, or ``LABELCURVE_OUTAGE_S`` seconds where it is set, so
    that a test of a server outage does not wait a minute."""
    value = os.environ.get(OUTAGE_ENV, "")
    if not value:
        return OUTAGE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise TrackingError(f"{OUTAGE_ENV}={value} is not a number of seconds above 0: set it to e.g. 60, or unset it")
    return seconds


class StudyTracker:
    """The MLflow records of one study, found or created by name and config fingerprint."""

    def __init__(
        self, uri: str, study: str, say: Callable[[str], None] = _warn, patience_s: float | None = None
    ) -> None:
        bound_http_retries()
        self.uri = uri
        patience_s = outage_s() if patience_s is None else patience_s
        with _creating(uri):  # MlflowClient opens (and may create) the store right away
            client = MlflowClient(uri)
            self.client = (
                PatientClient(client, uri, say, patience_s) if uri.startswith(("http://", "https://")) else client
            )
            experiment = self.client.get_experiment_by_name(study)
            self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(study)
        self.study = study

    def _search(self, *conditions: str) -> list:
        query = " and ".join(conditions)
        return self.client.search_runs([self.experiment_id], query, max_results=50000, order_by=["start_time ASC"])

    @staticmethod
    def only_study(uri: str) -> str:
        """The name of the store's one study, so that commands need no ``--study`` when there is one."""
        check_lookup(uri)  # before MLflow would create a missing store
        known = sorted(e.name for e in MlflowClient(uri).search_experiments() if e.name != "Default")
        if len(known) == 1:
            return known[0]
        if not known:
            raise TrackingError(f"no study in {redacted(uri)} yet: run `labelcurve run` first")
        raise TrackingError(f"{len(known)} studies in {redacted(uri)} ({', '.join(known)}): pass --study NAME")

    @classmethod
    def existing(cls, uri: str, study: str) -> StudyTracker:
        """The tracker of a study that has been run; a one-line error naming the known ones if not."""
        check_lookup(uri, study=study)
        client = MlflowClient(uri)
        if client.get_experiment_by_name(study) is None:
            known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            listing = ", ".join(known) if known else "none yet: run `labelcurve run` first"
            raise TrackingError(f"no study named '{study}' in {redacted(uri)}: known studies are {listing}")
        return cls(uri, study)

    def latest_parent(self) -> str:
        """The most recently started study run of this experiment."""
        found = self._search(f"tags.`{ROLE}` = '{STUDY}'")
        if not found:
            raise TrackingError(f"study '{self.study}' has no study run: run `labelcurve run` first")
        return found[-1].info.run_id

    def _same(self, fingerprint: str, data_digest: str) -> tuple[str, ...]:
        return (
            f"tags.`{ROLE}` = '{STUDY}'",
            f"tags.`{FINGERPRINT}` = '{fingerprint}'",
            f"tags.`{DATA}` = '{data_digest}'",
        )

    def find_parent(self, fingerprint: str, data_digest: str) -> str | None:
        """The study run of this config and data, if an earlier invocation made one."""
        found = self._search(*self._same(fingerprint, data_digest))
        return found[-1].info.run_id if found else None

    def open_parent(self, fingerprint: str, data_digest: str, config: dict) -> tuple[str, bool]:
        """The study's parent run id for this config and data, and whether it was resumed."""
        if (run_id := self.find_parent(fingerprint, data_digest)) is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id, True
        tags = {ROLE: STUDY, FINGERPRINT: fingerprint, DATA: data_digest, **source_tags()}
        run = self.client.create_run(self.experiment_id, run_name=self.study, tags=tags)
        self.client.log_batch(run.info.run_id, params=_params(_flatten(config)))
        # Another driver may have created the same study run since the search: every driver keeps
        # the first one, so that the lease on it lets only one of them run the study.
        same = self._search(*self._same(fingerprint, data_digest))
        first = min(same, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if first != run.info.run_id:
            self.client.delete_run(run.info.run_id)
        return first, False

    def parent_with_other_data(self, fingerprint: str, data_digest: str) -> str | None:
        """The latest study run with this config but another manifest: the data changed."""
        found = self._search(f"tags.`{ROLE}` = '{STUDY}'", f"tags.`{FINGERPRINT}` = '{fingerprint}'")
        other = [r for r in found if r.data.tags.get(DATA) != data_digest]
        return other[-1].info.run_id if other else None

    def children(self, parent_id: str, role: str) -> dict[str, object]:
        """Child runs by run key; a FINISHED run wins over an unfinished one of the same key."""
        runs = self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'", f"tags.`{ROLE}` = '{role}'")
        by_key: dict[str, object] = {}
        for run in runs:
            key = run.data.tags.get(RUN_KEY, "")
            if key not in by_key or run.info.status == FINISHED:
                by_key[key] = run
        return by_key

    def finished_pretraining(self, fingerprint: str):
        """The latest FINISHED pretraining run of this fingerprint in any study run of the study:
        a study that differs from an earlier one only in fine-tuning reuses its pretraining."""
        same = f"tags.`{PRETRAINING}` = '{fingerprint}'"
        found = self._search(f"tags.`{ROLE}` = '{PRETRAIN}'", same, f"attributes.status = '{FINISHED}'")
        return found[-1] if found else None

    def running_studies(self) -> list:
        """Study runs whose status is RUNNING: held by a live driver, or left by a killed one."""
        return self._search(f"tags.`{ROLE}` = '{STUDY}'", "attributes.status = 'RUNNING'")

    def running_children(self, parent_id: str) -> list:
        return self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'", "attributes.status = 'RUNNING'")

    def start_child(
        self,
        parent_id: str,
        role: str,
        key: str,
        name: str,
        params: dict,
        reuse=None,
        tags: dict[str, str] | None = None,
        start_time: float | None = None,
    ) -> str:
        """Create a child run, or reuse an unfinished one so that no key is ever recorded twice.
        ``start_time`` (unix seconds): when the work began, for runs recorded once it is done."""
        if reuse is not None:
            if tags:
                self.client.log_batch(reuse.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            return reuse.info.run_id
        run = self.client.create_run(
            self.experiment_id,
            start_time=int(start_time * 1000) if start_time else None,
            run_name=name,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_id,
                ROLE: role,
                RUN_KEY: key,
                MLFLOW_RUN_NAME: name,
                **source_tags(),
                **(tags or {}),
            },
        )
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, run_id: str, status: str = FINISHED, end_time: float | None = None) -> None:
        self.client.set_terminated(run_id, status, end_time=int(end_time * 1000) if end_time else None)

    def log_series(self, run_id: str, series: dict[str, dict[int, float]]) -> None:
        """Metrics by key and step, each (step, value) point logged once however often we are asked."""
        now = int(time.time() * 1000)
        metrics = []
        for key, by_step in series.items():
            seen = {(m.step, round(m.value, 12)) for m in self.client.get_metric_history(run_id, key)}
            metrics += [Metric(key, float(v), now, s) for s, v in by_step.items() if (s, round(v, 12)) not in seen]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def log_artifacts(self, run_id: str, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            for name, content in files.items():
                Path(folder, name).write_bytes(content)
            self.client.log_artifacts(run_id, folder)

    def download(self, run_id: str, name: str, folder: str) -> Path:
        return Path(self.client.download_artifacts(run_id, name, folder))

    def ui_url(self, host: str = "127.0.0.1", port: int = 5000) -> str:
        """The study's runs table: on its tracking server (without the URI's credentials: the link
        is printed), or where ``labelcurve ui`` serves it."""
        base = redacted(self.uri) if self.uri.startswith(("http://", "https://")) else f"http://{host}:{port}"
        return runs_url(base, self.experiment_id)
