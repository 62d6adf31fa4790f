"""Study runs are found again by config fingerprint and data digest, in a real MLflow store."""

from __future__ import annotations

from cluster.tracking import StudyTracker


def test_changed_data_opens_a_new_study_run_and_names_the_old_one(tmp_path):
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "study")
    first, resumed = tracker.open_parent("config", "data-a", {"study": "study"})
    assert not resumed
    assert tracker.open_parent("config", "data-a", {"study": "study"}) == (first, True)
    second, resumed = tracker.open_parent("config", "data-b", {"study": "study"})
    assert not resumed and second != first
    assert tracker.parent_with_other_data("config", "data-b") == first
    assert tracker.parent_with_other_data("other-config", "data-b") is None


def test_ui_link_opens_the_runs_table_not_the_genai_overview(tmp_path):
    local = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "study")
    runs = f"/#/experiments/{local.experiment_id}/runs?workflowType=machine_learning"
    assert local.ui_url(port=5001) == f"http://127.0.0.1:5001{runs}"
    local.uri = "http://tracking.example:5000/"  # a tracking server serves its own UI
    assert local.ui_url() == f"http://tracking.example:5000{runs}"
