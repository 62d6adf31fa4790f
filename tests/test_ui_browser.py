"""The link a study prints opens MLflow's runs table with the study's runs, in a real browser
against a real `labelcurve ui` (MLflow 3 opens `#/experiments/ID` on its GenAI overview)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.tracking import FINETUNE, StudyTracker
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.slow


def _serve(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``labelcurve ARGS`` as a server in its own session; its stdout (the lines it prints before
    MLflow takes over the process) is readable."""
    command = [str(Path(sys.executable).parent / "labelcurve"), *args]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )


def test_printed_link_opens_the_runs_table_with_the_study_runs(tmp_path, browser):
    from playwright.sync_api import expect

    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "quickstart")
    parent, _ = tracker.open_parent("fingerprint", "data", {"study": "quickstart"})
    for arm in ("ssl-linear", "scratch"):
        tracker.finish(tracker.start_child(parent, FINETUNE, f"{arm}/1/0", f"{arm}-1-0", {"arm": arm}))
    tracker.finish(parent)
    port = free_port()
    ui = _serve(tmp_path, "ui", "--port", str(port))
    try:
        printed = [ui.stdout.readline() for _ in range(2)]  # written before MLflow takes over the process
        link = printed[1].removeprefix("  study quickstart: ").strip()
        assert link == tracker.ui_url(port=port), printed  # the link `labelcurve run` prints, too
        wait_for(f"http://127.0.0.1:{port}/health", seconds=180, process=ui)
        page = browser.new_page()
        page.goto(link)
        # the runs table of the study: its study run listed, the two labeled runs nested under it
        expect(page.get_by_role("link", name="quickstart", exact=True).first).to_be_visible(timeout=90_000)
        expect(page.get_by_text("3 matching runs")).to_be_visible()
        expect(page.get_by_role("columnheader", name="Run Name").first).to_be_visible()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


def test_an_exposed_server_lets_only_the_admin_write(tmp_path):
    import base64
    import json
    import urllib.error
    import urllib.request

    # a loopback address other than 127.0.0.1 takes the --expose path (basic authentication) while
    # the server, with its fixed password, stays off the network
    host = "127.0.0.2"
    with socket.socket() as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            pytest.skip(f"{host} is not a loopback address here (macOS configures 127.0.0.1 only)")
        port = probe.getsockname()[1]
    # MLflow answers 403 to a Host header outside localhost and private ranges (DNS rebinding guard)
    env = {
        **os.environ,
        "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-Passw0rd",
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"{host}:{port}",
    }
    server = _serve(tmp_path, "server", "--host", host, "--port", str(port), "--expose", env=env)
    try:
        assert server.stdout.readline().startswith(
            f"exposing the runs and models of sqlite:///mlflow-server.db on http://{host}:{port}"
        )
        wait_for(f"http://{host}:{port}/health", seconds=180, process=server)
        create = f"http://{host}:{port}/api/2.0/mlflow/experiments/create"
        body = json.dumps({"name": "from-elsewhere"}).encode()

        def post(headers: dict) -> int:
            request = urllib.request.Request(create, body, {"Content-Type": "application/json", **headers})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status
            except urllib.error.HTTPError as error:
                return error.code

        assert post({}) == 401  # anonymous: no read, no write
        admin = base64.b64encode(b"admin:s3cret-Passw0rd").decode()
        assert post({"Authorization": f"Basic {admin}"}) == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
