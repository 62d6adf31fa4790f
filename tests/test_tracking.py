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


def test_every_run_records_the_code_that_made_it_and_a_resume_by_other_code_says_so(tmp_path):
    from cluster.provenance import GIT_COMMIT, VERSION, changed_since, source_tags
    from cluster.tracking import FINETUNE

    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "study")
    parent, _ = tracker.open_parent("config", "data", {"study": "study"})
    child = tracker.start_child(parent, FINETUNE, "scratch/1/0", "scratch-1-0", {})
    for run_id in (parent, child):
        tags = tracker.client.get_run(run_id).data.tags
        assert tags[VERSION] == source_tags()[VERSION] != "unknown"
        assert len(tags.get(GIT_COMMIT, "")) == 40  # this checkout's commit, as MLflow's source tag
    assert changed_since(tracker.client.get_run(parent).data.tags) is None
    tracker.client.set_tag(parent, VERSION, "0.0.1")
    tracker.client.set_tag(parent, GIT_COMMIT, "1234567" + "0" * 33)
    line = changed_since(tracker.client.get_run(parent).data.tags)
    assert line.startswith("this study run was recorded by labelcurve 0.0.1 (commit 1234567); this is labelcurve ")
    assert line.endswith(": continuing with it")


def test_commands_default_to_the_only_study_and_name_them_when_there_are_several(tmp_path):
    import pytest

    from cluster.tracking import TrackingError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingError, match=r"no tracking store at .*mlflow.db to look up a study in: run `labelcurve"):
        StudyTracker.only_study(uri)
    assert not (tmp_path / "mlflow.db").exists()  # a look-up creates no store
    StudyTracker(uri, "digits")
    assert StudyTracker.only_study(uri) == "digits"
    StudyTracker(uri, "cifar")
    with pytest.raises(TrackingError, match=r"2 studies in .* \(cifar, digits\): pass --study NAME"):
        StudyTracker.only_study(uri)
