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
