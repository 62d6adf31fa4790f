"""Where the tracking store is and whether it answers: importable without MLflow, so that a
wrong ``MLFLOW_TRACKING_URI`` is reported before anything heavy is loaded."""

from __future__ import annotations

import base64
import json
import os
import re
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


#: a URI's scheme, then its userinfo up to the last '@' before the path: ``s3://KEY:SECRET@bucket``
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
_REST = "/api/2.0/mlflow"


def redacted(text: str) -> str:
    """``text`` with the user and password of every URI in it replaced by ``***``: the one mask
    for everything that leaves the process (run params, printed lines, commands, job files)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def _request(uri: str, endpoint: str) -> urllib.request.Request:
    """A request to ``endpoint`` of the server at ``uri``, authenticated as MLflow's own client
    is: the URI's user and password, else ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``TOKEN``
    (urllib would take the userinfo for a host name)."""
    parts = urllib.parse.urlsplit(uri)
    base = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
    request = urllib.request.Request(f"{base}{endpoint}")
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    else:
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user is not None:
        pair = f"{user}:{password}"
        request.add_header("Authorization", f"Basic {base64.b64encode(pair.encode()).decode()}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    return request


def _unreachable(uri: str, reason: object) -> TrackingError:
    return TrackingError(
        f"MLflow tracking server {redacted(uri)} is not reachable ({reason}): start it or unset MLFLOW_TRACKING_URI"
    )


def _get(uri: str, endpoint: str, timeout: float = 5.0) -> bytes:
    """The answer of a GET on the server at ``uri``; a one-line error when it does not
    answer or refuses the credentials (a 404 is raised as is: look-ups ask for what may not be there)."""
    try:
        with urllib.request.urlopen(_request(uri, endpoint), timeout=timeout) as answer:
            return answer.read()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise TrackingError(
                f"MLflow tracking server {redacted(uri)} refused the credentials (HTTP {error.code}): "
                "fix the user and password in MLFLOW_TRACKING_URI or MLFLOW_TRACKING_USERNAME/PASSWORD"
            ) from None
        if error.code == 404:
            raise
        answered = f"answered HTTP {error.code} ({error.reason})"
        raise TrackingError(f"MLflow tracking server {redacted(uri)} {answered}") from None
    except (urllib.error.URLError, OSError) as error:
        raise _unreachable(uri, getattr(error, "reason", error)) from None


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before compute, when a tracking server does not answer. ``/health`` answers
    anyone; with credentials, a read also checks that the server takes them."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        _get(uri, "/health", timeout)
    except urllib.error.HTTPError as error:  # something answers there, but not MLflow
        raise _unreachable(uri, error.reason) from None
    parts = urllib.parse.urlsplit(uri)
    if parts.username is not None or os.environ.get("MLFLOW_TRACKING_USERNAME"):
        _get(uri, f"{_REST}/experiments/search?max_results=1", timeout)


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


def _missing(uri: str, endpoint: str, key: str, value: str) -> bool:
    """Whether the server at ``uri`` answers ``endpoint?key=value`` with RESOURCE_DOES_NOT_EXIST."""
    try:
        _get(uri, f"{endpoint}?{urllib.parse.urlencode({key: value})}")
    except urllib.error.HTTPError:  # only a 404 comes through
        return True
    return False


def _names(uri: str, kind: str, field: str) -> list[str]:
    """The names of the server's experiments or registered models, sorted, for an error line."""
    found = json.loads(_get(uri, f"{_REST}/{kind}/search?max_results=1000")).get(field, [])
    return sorted(item["name"] for item in found)


def check_lookup(uri: str, *, study: str | None = None, model: str | None = None) -> None:
    """Say in one line, before MLflow is loaded and without creating anything, that a study or a
    model cannot be found: a SQLite store that does not exist, or a server that has no such thing.

    Opening a missing SQLite store with MLflow would create it (and cost seconds of imports and
    schema migrations) only to report that it is empty. ``model`` is ``models:/NAME...`` or
    ``NAME@ALIAS`` / ``NAME/VERSION``; ``study`` is an experiment name (None: any study).
    """
    what = f"model {model}" if model else f"study '{study}'" if study else "a study"
    if not store_exists(uri):
        raise TrackingError(
            f"no tracking store at {_sqlite_file(uri)} to look up {what} in: "
            "run `labelcurve run` here first, or set MLFLOW_TRACKING_URI to the store of your studies"
        )
    if not uri.startswith(("http://", "https://")):
        return
    check_tracking_server(uri)
    if model:
        name = re.split(r"[@/]", model.removeprefix("models:/"), maxsplit=1)[0]
        if _missing(uri, f"{_REST}/registered-models/get", "name", name):
            known = ", ".join(_names(uri, "registered-models", "registered_models")) or "none yet"
            raise TrackingError(f"no registered model '{name}' in {redacted(uri)}: registered are {known}")
    if study and _missing(uri, f"{_REST}/experiments/get-by-name", "experiment_name", study):
        known = ", ".join(name for name in _names(uri, "experiments", "experiments") if name != "Default")
        listing = known or "none yet: run `labelcurve run` first"
        raise TrackingError(f"no study named '{study}' in {redacted(uri)}: known studies are {listing}")


def runs_url(base: str, experiment_id: str) -> str:
    """A study's runs table in the MLflow UI at ``base``. MLflow 3 opens ``#/experiments/ID`` on its
    GenAI overview (traces, token usage); the runs are under ``/runs`` with the machine-learning workflow."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
