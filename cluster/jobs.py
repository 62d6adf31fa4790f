"""Studies as Ray jobs: submit to a cluster's Jobs API, list, follow, stop.

The submitted job runs ``labelcurve run`` on the cluster (Ray connects to it from inside the job)
with the config shipped in the job's working directory and ``MLFLOW_TRACKING_URI`` passed as an
environment variable, so the runs land in the same tracking server the user browses.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from cluster.config import ConfigError, StudyConfig
from cluster.ray_runtime import TOKEN_HELP, RayConnectError, use_token_if_available
from cluster.tracking_server import redacted


def client(address: str):
    """A Jobs API client for ``address`` (``http://HOST:8265``), failing fast and in one line."""
    use_token_if_available()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address if "://" in address else f"http://{address}"
    try:
        urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=5).close()
    except urllib.error.HTTPError:
        pass  # it answered: an auth failure is reported below, with how to fix it
    except (urllib.error.URLError, OSError) as error:
        raise RayConnectError(
            f"Ray Jobs API at {address} is not reachable ({getattr(error, 'reason', error)}): start the head with "
            "`ray start --head --dashboard-host 127.0.0.1` (needs ray[default]) or fix --address"
        ) from None
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or Path("~/.ray/auth_token").expanduser().is_file()
    ):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        jobs = JobSubmissionClient(address)
        jobs.list_jobs()
    except AuthenticationError:
        raise RayConnectError(f"Ray at {address} refused the token (missing or wrong): {TOKEN_HELP}") from None
    return jobs


def _submit_when_ready(jobs, timeout: float = 60, **job) -> str:
    """A freshly started head answers before its job agent is up ("No available agent to submit
    job, please try again later"): retry that, and only that, for up to ``timeout`` seconds."""
    deadline, wait = time.monotonic() + timeout, 1.0
    while True:
        try:
            return jobs.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error):
                raise
            if time.monotonic() > deadline:
                raise RayConnectError(
                    f"the cluster's job agent did not come up within {timeout:.0f} s: "
                    "check `ray status` on the head and try again"
                ) from None
            time.sleep(wait)
            wait = min(wait * 2, 8)


def check_paths(cfg: StudyConfig) -> None:
    """Paths in a job are read on the cluster: relative ones would point into the job's temporary
    working directory (checkpoints lost, data not found), so they are refused before submitting."""
    storage = cfg.pretrain.storage_path
    if "://" not in storage and not Path(storage).is_absolute():
        raise ConfigError(
            f"pretrain.storage_path '{storage}' is relative: a job needs a path every node can reach, "
            "e.g. pretrain.storage_path=/shared/labelcurve-runs or s3://bucket/labelcurve"
        )
    for key in ("path", "unlabeled_path"):
        value = getattr(cfg.data, key)
        if value and "://" not in value and not Path(value).is_absolute():
            raise ConfigError(f"data.{key} '{value}' is relative: give the absolute path on the cluster's nodes")


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def job_files(cfg: StudyConfig) -> dict[str, str]:
    """The files a job ships (its working directory): the study config and who submitted it.

    Ray keeps a job's working directory on the cluster where anyone with access can read it, so a
    config whose URIs carry credentials (``data.path=s3://KEY:SECRET@bucket``) is refused, as a
    password in the tracking URI is.
    """
    check_paths(cfg)
    dump = cfg.model_dump(mode="json", exclude_none=True)
    for key, value in _flat(dump).items():
        if redacted(str(value)) != str(value):
            raise ConfigError(
                f"{key} '{redacted(str(value))}' carries credentials, which the job's files would show to everyone on "
                "the cluster: drop them from the URI and give them to the cluster's nodes through their own "
                "environment or credential files (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials)"
            )
    provenance = {"submitted": time.time(), "by": getpass.getuser(), "host": socket.gethostname()}
    return {"study.yaml": yaml.safe_dump(dump), "submitted.json": json.dumps(provenance)}  # also makes each unique


def job_env(tracking_uri: str) -> dict[str, str]:
    """What a job's runtime env carries: the tracking URI and Ray's auth mode, never a secret.

    Ray's dashboard and ``list_jobs`` show a job's runtime env to anyone with cluster access, so
    MLflow credentials must reach the cluster through its nodes' own environment instead.
    """
    if urllib.parse.urlsplit(tracking_uri).password is not None:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI {redacted(tracking_uri)} carries a password, which the job's runtime env "
            "would show to everyone on the cluster: drop it from the URI and set MLFLOW_TRACKING_USERNAME/"
            "PASSWORD on the cluster's nodes"
        )
    env = {"MLFLOW_TRACKING_URI": tracking_uri}  # ray.init inside the job adds the rest
    if os.environ.get("RAY_AUTH_MODE"):
        env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
    return env


def submit(address: str, cfg: StudyConfig, tracking_uri: str) -> str:
    """Ship the validated study config and start it as a job; returns the job id."""
    files = job_files(cfg)
    jobs = client(address)
    folder = Path(tempfile.mkdtemp(prefix="labelcurve-job-"))
    try:
        for name, content in files.items():
            (folder / name).write_text(content)
        return _submit_when_ready(
            jobs,
            entrypoint="labelcurve run study.yaml",
            runtime_env={"working_dir": str(folder), "env_vars": job_env(tracking_uri)},
            metadata={"labelcurve.study": cfg.study},
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
