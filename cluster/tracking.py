"""MLflow tracking for a study: one experiment per study name, a parent run, child runs.

Runs are found again by tags, which is what makes a study resumable: a re-run with the same
config fingerprint reopens the parent run, skips FINISHED children and reuses unfinished ones.
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

ROLE, FINGERPRINT, RUN_KEY = "labelcurve.role", "labelcurve.fingerprint", "labelcurve.run_key"
N_CLASSES, DATA = "labelcurve.n_classes", "labelcurve.data_digest"
STUDY, PRETRAIN, FINETUNE = "study", "pretrain", "finetune"
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


class TrackingError(RuntimeError):
    """The tracking store cannot be used, phrased as one line for the user."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in the working directory (absolute,
    so that Ray workers with another working directory write to the same file)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def redacted(uri: str) -> str:
    """``uri`` with any user and password replaced by ``***``, fit for a log line."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before compute, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"MLflow tracking server {redacted(uri)} is not reachable ({reason}): start it or unset MLFLOW_TRACKING_URI"
        ) from None


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class StudyTracker:
    """The MLflow records of one study, found or created by name and config fingerprint."""

    def __init__(self, uri: str, study: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(study)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(study)
        self.study = study

    def _search(self, *conditions: str) -> list:
        query = " and ".join(conditions)
        return self.client.search_runs([self.experiment_id], query, max_results=50000, order_by=["start_time ASC"])

    @classmethod
    def existing(cls, uri: str, study: str) -> StudyTracker:
        """The tracker of a study that has been run; a one-line error naming the known ones if not."""
        client = MlflowClient(uri)
        if client.get_experiment_by_name(study) is None:
            known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            listing = ", ".join(known) if known else "none yet: run `labelcurve run` first"
            raise TrackingError(f"no study named '{study}' in {uri}: known studies are {listing}")
        return cls(uri, study)

    def latest_parent(self) -> str:
        """The most recently started study run of this experiment."""
        found = self._search(f"tags.`{ROLE}` = '{STUDY}'")
        if not found:
            raise TrackingError(f"study '{self.study}' has no study run: run `labelcurve run` first")
        return found[-1].info.run_id

    def open_parent(self, fingerprint: str, data_digest: str, config: dict) -> tuple[str, bool]:
        """The study's parent run id for this config and data, and whether it was resumed."""
        found = self._search(
            f"tags.`{ROLE}` = '{STUDY}'", f"tags.`{FINGERPRINT}` = '{fingerprint}'", f"tags.`{DATA}` = '{data_digest}'"
        )
        if found:
            run_id = found[-1].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id, True
        run = self.client.create_run(
            self.experiment_id, run_name=self.study, tags={ROLE: STUDY, FINGERPRINT: fingerprint, DATA: data_digest}
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in _flatten(config).items()])
        return run.info.run_id, False

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

    def start_child(self, parent_id: str, role: str, key: str, name: str, params: dict, reuse=None) -> str:
        """Create a child run, or reuse an unfinished one so that no key is ever recorded twice."""
        if reuse is not None:
            return reuse.info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={MLFLOW_PARENT_RUN_ID: parent_id, ROLE: role, RUN_KEY: key, MLFLOW_RUN_NAME: name},
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, run_id: str, status: str = FINISHED) -> None:
        self.client.set_terminated(run_id, status)

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
        """The study's runs table. MLflow 3 opens ``#/experiments/ID`` on its GenAI overview
        (traces, token usage); the runs are under ``/runs`` with the machine-learning workflow."""
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else f"http://{host}:{port}"
        return f"{base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
