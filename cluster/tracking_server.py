"""Where the tracking store is and whether it answers: importable without MLflow, so that a
wrong ``MLFLOW_TRACKING_URI`` is reported before anything heavy is loaded."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pretrain.errors import LabelcurveError


class TrackingError(LabelcurveError, RuntimeError):
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


def _sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (the default one included), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0])


def store_exists(uri: str) -> bool:
    """Whether MLflow would open a store at ``uri`` rather than create one: a SQLite file that is
    there (a server or another database counts as there)."""
    path = _sqlite_file(uri)
    return path is None or path.is_file()


def runs_url(base: str, experiment_id: str) -> str:
    """A study's runs table in the MLflow UI at ``base``. MLflow 3 opens ``#/experiments/ID`` on its
    GenAI overview (traces, token usage); the runs are under ``/runs`` with the machine-learning workflow."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
