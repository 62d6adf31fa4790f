"""The link a study prints opens MLflow's runs table with the study's runs, in a real browser
against a real `labelcurve ui` (MLflow 3 opens `#/experiments/ID` on its GenAI overview)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.tracking import FINETUNE, StudyTracker
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.slow


def test_printed_link_opens_the_runs_table_with_the_study_runs(tmp_path, browser):
    from playwright.sync_api import expect

    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "quickstart")
    parent, _ = tracker.open_parent("fingerprint", "data", {"study": "quickstart"})
    for arm in ("ssl-linear", "scratch"):
        tracker.finish(tracker.start_child(parent, FINETUNE, f"{arm}/1/0", f"{arm}-1-0", {"arm": arm}))
    tracker.finish(parent)
    port = free_port()
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "labelcurve"), "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", seconds=180, process=ui)
        page = browser.new_page()
        page.goto(tracker.ui_url(port=port))
        # the runs table of the study: its study run listed, the two labeled runs nested under it
        expect(page.get_by_role("link", name="quickstart", exact=True).first).to_be_visible(timeout=90_000)
        expect(page.get_by_text("3 matching runs")).to_be_visible()
        expect(page.get_by_role("columnheader", name="Run Name").first).to_be_visible()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)
