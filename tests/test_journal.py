"""The local journal: finished runs survive a tracking server outage and are recorded after it,
from the journal, instead of being computed again."""

from __future__ import annotations

import json
import sys
import time

import pytest

from cluster.journal import Journal, replay
from cluster.study import _log_result
from cluster.tracking import FINETUNE, FINISHED, StudyTracker, TrackingUnreachable
from finetune.sweep import RunResult, RunSpec
from tests.conftest import free_port, mlflow_server

RESULTS = [
    RunResult(RunSpec("scratch", 1, 0), n_labels=10, accuracy=0.31, macro_f1=0.29, train_seconds=1.5),
    RunResult(RunSpec("ssl-linear", 5, 1), n_labels=50, accuracy=0.625, macro_f1=0.61, train_seconds=0.25),
    RunResult(RunSpec("ssl-finetune", "all", 0), n_labels=900, accuracy=0.9, macro_f1=0.875, train_seconds=12.0),
]


def test_results_are_kept_across_processes_until_dropped(tmp_path):
    journal = Journal.of("my study/2", "abc123", tmp_path)
    assert journal.path == tmp_path / "my-study-2-abc123.jsonl" and journal.pending() == []
    for result in RESULTS:
        journal.keep(result)
    with open(journal.path, "a") as out:
        out.write('{"spec": {"arm": "scra')  # the driver killed mid-write: that run is computed again
    reopened = Journal.of("my study/2", "abc123", tmp_path)  # what the next driver reads
    assert reopened.pending() == RESULTS  # exact values and types: budget 'all' stays a string
    assert json.loads(journal.path.read_text().splitlines()[2])["spec"] == {
        "arm": "ssl-finetune",
        "budget": "all",
        "seed": 0,
    }

    journal.drop(RESULTS[1].spec.key)
    assert reopened.pending() == [RESULTS[0], RESULTS[2]] and len(reopened) == 2
    journal.drop(RESULTS[0].spec.key)
    journal.drop(RESULTS[2].spec.key)
    assert not journal.path.exists()


def test_replay_records_only_what_mlflow_lacks_and_empties_the_journal(tmp_path):
    journal = Journal.of("study", "run", tmp_path)
    for result in [*RESULTS, RESULTS[1]]:  # kept twice: recorded once
        journal.keep(result)
    recorded: list[RunResult] = []
    assert replay(journal, {RESULTS[0].spec.key}, recorded.append) == [r.spec.key for r in RESULTS[1:]]
    assert recorded == RESULTS[1:]
    assert not journal.path.exists()
    assert replay(journal, set(), recorded.append) == [] and len(recorded) == 2


def finished_runs(tracker: StudyTracker, parent: str) -> dict[str, dict[str, float]]:
    runs = tracker.children(parent, FINETUNE).values()
    return {r.data.tags["labelcurve.run_key"]: r.data.metrics for r in runs if r.info.status == FINISHED}


def test_a_killed_server_costs_no_finished_run(tmp_path, monkeypatch):
    port, said = free_port(), []
    with mlflow_server(tmp_path, port) as url:
        tracker = StudyTracker(url, "outage", say=said.append, patience_s=1)
        parent, _ = tracker.open_parent("config", "data", {})
        journal = Journal.of("outage", parent, tmp_path / "journal")
        journal.keep(RESULTS[0])  # what run_study does with each result: journal, log, drop
        _log_result(tracker, parent, RESULTS[0], None)
        journal.drop(RESULTS[0].spec.key)
    # The server is killed; the next finished run is kept, and logging it fails within the bound.
    journal.keep(RESULTS[1])
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as outage:
        _log_result(tracker, parent, RESULTS[1], None)
    assert time.monotonic() - started < 1 + 15  # MLflow's own retries cut to seconds (its default: minutes)
    assert said == [f"tracking server {url} unreachable, retrying for up to 1 s"]  # said once
    monkeypatch.setattr(sys, "argv", ["labelcurve", "run", "study=outage"])
    assert str(journal.kept(outage.value)) == (
        f"tracking server {url} unreachable for 1 s: 1 finished runs kept in {journal.path}; "
        "when it is back, run `labelcurve run study=outage` to record them without recomputing"
    )

    with mlflow_server(tmp_path, port) as url:  # restarted on the same store
        tracker = StudyTracker(url, "outage")
        assert set(finished_runs(tracker, parent)) == {RESULTS[0].spec.key}
        recorded = replay(journal, set(finished_runs(tracker, parent)), lambda r: _log_result(tracker, parent, r, None))
        assert recorded == [RESULTS[1].spec.key] and not journal.path.exists()
        runs = finished_runs(tracker, parent)  # the sweep skips every FINISHED key: nothing is recomputed
        assert runs[RESULTS[1].spec.key] == {
            "test_accuracy": 0.625,
            "test_macro_f1": 0.61,
            "train_seconds": 0.25,
            "n_labels": 50,
        }
        assert set(runs) == {RESULTS[0].spec.key, RESULTS[1].spec.key}
