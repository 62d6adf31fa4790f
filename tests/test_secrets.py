"""Credentials inside URIs (``s3://KEY:SECRET@bucket``, ``http://user:pw@host``) never leave the
process: run params, job files, printed lines and resume commands show ``***`` instead, a job
refuses to ship them, and a tracking server reached with them is checked with them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.tracking_server import TrackingError, check_lookup, check_tracking_server, redacted
from tests.conftest import free_port, wait_for

SECRET_PATH = "s3://KEY:SECRET@bucket/x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://KEY:SECRET@bucket/images", "s3://***@bucket/images"),
        ("s3://KEY@bucket/images", "s3://***@bucket/images"),
        ("http://user:pw@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("https://u:p@mlflow.example.com/x", "https://***@mlflow.example.com/x"),
        ("gs://a%40b:p%2Fq@bucket/f.png", "gs://***@bucket/f.png"),  # encoded '@' and '/' in the userinfo
        ("http://u:p@w@host/path", "http://***@host/path"),  # an unencoded '@' in the password: the last one ends it
        # no userinfo: unchanged, '@' in a path, a model alias or an e-mail address included
        ("s3://bucket/images", "s3://bucket/images"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
        ("s3://bucket/cat@2x/0001.png", "s3://bucket/cat@2x/0001.png"),
        ("models:/simclr@champion", "models:/simclr@champion"),
        ("mail me@example.com", "mail me@example.com"),
        (
            "labelcurve run data.path=s3://K1:S1@b1/x data.unlabeled_path='gs://K2:S2@b2/y' with http://u:p@h:5000",
            "labelcurve run data.path=s3://***@b1/x data.unlabeled_path='gs://***@b2/y' with http://***@h:5000",
        ),
        ('{"path": "s3://K:S@b/x", "other": "s3://b/y"}', '{"path": "s3://***@b/x", "other": "s3://b/y"}'),
    ],
)
def test_redacted_masks_the_userinfo_of_every_uri_in_a_string(text, expected):
    assert redacted(text) == expected


def _secret_config():
    return load_config(
        None,
        ["data.name=folder", f"data.path={SECRET_PATH}", "pretrain.storage_path=s3://AKEY:SKEY@runs/labelcurve"],
    )


def test_study_and_pretraining_params_hold_no_secret(tmp_path):
    from cluster.tracking import PRETRAIN, StudyTracker

    cfg = _secret_config()
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "secrets")
    parent, _ = tracker.open_parent("fingerprint", "digest", cfg.model_dump(mode="json"))
    params = {f"pretrain.{k}": v for k, v in cfg.pretrain.model_dump().items()}  # as the study's pretraining logs them
    child = tracker.start_child(parent, PRETRAIN, "pretrain", "pretrain-simclr", params)
    study_params = tracker.client.get_run(parent).data.params
    assert study_params["data.path"] == "s3://***@bucket/x"
    assert tracker.client.get_run(child).data.params["pretrain.storage_path"] == "s3://***@runs/labelcurve"
    logged = str(study_params) + str(tracker.client.get_run(child).data.params)
    assert "SECRET" not in logged and "SKEY" not in logged


def test_the_printed_ui_link_holds_no_password():
    from cluster.tracking import StudyTracker

    tracker = object.__new__(StudyTracker)  # the link only needs the URI and the experiment id
    tracker.uri, tracker.experiment_id = "http://user:pw@10.0.0.5:5000", "7"
    assert tracker.ui_url().startswith("http://***@10.0.0.5:5000/#/experiments/7/runs")


def test_a_job_refuses_to_ship_credentials_and_ships_plain_uris():
    from cluster.jobs import job_files

    with pytest.raises(ConfigError) as refused:
        job_files(_secret_config())
    message = str(refused.value)
    assert "KEY:SECRET" not in message and "\n" not in message
    assert "data.path 's3://***@bucket/x' carries credentials" in message
    assert "the cluster's nodes" in message  # the fix: credentials from the nodes' own environment or files
    plain = load_config(None, ["data.name=folder", "data.path=s3://bucket/x", "pretrain.storage_path=s3://runs/lc"])
    files = job_files(plain)
    assert "path: s3://bucket/x" in files["study.yaml"] and "storage_path: s3://runs/lc" in files["study.yaml"]


def test_the_journal_resume_command_holds_no_secret(tmp_path, monkeypatch):
    from cluster.journal import Journal
    from cluster.tracking import TrackingUnreachable

    monkeypatch.setattr(sys, "argv", ["/venv/bin/labelcurve", "run", "data.name=folder", f"data.path={SECRET_PATH}"])
    line = str(Journal.of("study", "run", tmp_path).kept(TrackingUnreachable("tracking server gone")))
    assert "run `labelcurve run data.name=folder data.path=s3://***@bucket/x`" in line and "SECRET" not in line


def test_the_supervisor_resume_line_holds_no_secret(monkeypatch, capfd):
    from cluster import supervise

    # a driver that dies without a word: the watcher prints the command that resumes it
    monkeypatch.setattr(supervise, "_command", lambda argv: [sys.executable, "-c", "import os; os._exit(3)"])
    assert supervise.run_supervised(["run", f"data.path={SECRET_PATH}"]) == 3
    line = capfd.readouterr().err
    assert "resume with `labelcurve run data.path=s3://***@bucket/x`" in line and "SECRET" not in line


def test_cli_errors_hold_no_secret(labelcurve, tmp_path):
    result = labelcurve("run", "data.name=folder", "data.path=nosuch://KEY:SECRET@bucket/x")
    assert result.returncode == 2 and "SECRET" not in result.stderr + result.stdout, result.stderr
    assert "nosuch://***@bucket/x" in result.stderr


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A real MLflow server with basic authentication on loopback (admin password fixed here)."""
    root = tmp_path_factory.mktemp("auth-server")
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth", "--workers", "1"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 's.db'}"]
    command += ["--artifacts-destination", str(root / "a")]
    env = {
        **os.environ,
        "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-Passw0rd",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "0" * 64,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    server = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", seconds=180, process=server)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def test_health_check_authenticates_with_the_uri_or_the_environment(auth_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    check_tracking_server(f"http://admin:s3cret-Passw0rd@{auth_server}")  # the URI's credentials
    with pytest.raises(TrackingError) as refused:
        check_tracking_server(f"http://admin:wrong@{auth_server}")
    assert str(refused.value) == (
        f"MLflow tracking server http://***@{auth_server} refused the credentials (HTTP 401): "
        "fix the user and password in MLFLOW_TRACKING_URI or MLFLOW_TRACKING_USERNAME/PASSWORD"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-Passw0rd")
    check_tracking_server(f"http://{auth_server}")  # MLflow's own variables


def test_lookups_on_a_server_ask_it_with_the_credentials(auth_server):
    url = f"http://admin:s3cret-Passw0rd@{auth_server}"
    shown = f"http://***@{auth_server}"
    with pytest.raises(TrackingError) as missing:
        check_lookup(url, model="models:/nope@latest")
    assert str(missing.value) == f"no registered model 'nope' in {shown}: registered are none yet"
    with pytest.raises(TrackingError) as missing:
        check_lookup(url, study="nope")
    known = "known studies are none yet: run `labelcurve run` first"
    assert str(missing.value) == f"no study named 'nope' in {shown}: {known}"
    check_lookup(url, study="Default")  # there: no error
    check_lookup(url)


def test_listed_items_carry_no_credentials():
    """The manifest (an artifact) and the labeled runs' dataset inputs are built from listed items:
    pyarrow moves a URI's credentials into the filesystem object, so items never hold them."""
    from pretrain.manifest import Location

    root = Location.parse("s3://KEY:SECRET@bucket/images?endpoint_override=127.0.0.1:9")
    assert root.item(f"{root.path}/cat/0001.png") == "s3://bucket/images/cat/0001.png"
