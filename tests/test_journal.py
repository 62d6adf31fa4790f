"""The local journal: finished runs survive a tracking server outage and are recorded after it,
from the journal, instead of being computed again."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cluster.journal import Journal, replay
from cluster.tracking import OUTAGE_S, TrackingError, outage_s
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


def test_the_outage_wait_is_a_number_of_seconds(monkeypatch):
    monkeypatch.delenv("LABELCURVE_OUTAGE_S", raising=False)
    assert outage_s() == OUTAGE_S == 60
    monkeypatch.setenv("LABELCURVE_OUTAGE_S", "2.5")
    assert outage_s() == 2.5
    for bad in ("soon", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("LABELCURVE_OUTAGE_S", bad)
        with pytest.raises(TrackingError, match=f"LABELCURVE_OUTAGE_S={bad} is not a number of seconds above 0"):
            outage_s()


BIN = Path(sys.executable).parent
GRID = [  # scratch only: no pretraining, so the sweep starts within seconds of the driver
    "study=outage",
    "finetune.arms=[scratch]",
    "finetune.budgets=[1, 2, 5]",
    "finetune.seeds=[0, 1]",
    "finetune.steps=30",
]
SWEPT = re.compile(r"^sweep: (\d+)/(\d+) ", re.MULTILINE)  # the sweep's progress lines, piped output


def _store_runs(url: str) -> list:
    """The study's labeled runs, read from the tracking server."""
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("outage")
    return client.search_runs([experiment.experiment_id], "tags.`labelcurve.role` = 'finetune'", max_results=1000)


@pytest.mark.slow
def test_a_server_that_stays_down_ends_the_driver_with_the_journal_and_the_rerun_records_it(tmp_path):
    """The README's promise, end to end: a real server killed mid-sweep costs no finished run."""
    port, journal_dir = free_port(), tmp_path / "journal"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "LABELCURVE_JOURNAL_DIR": str(journal_dir),
        # the driver's outage wait, 60 s by default: at 60 s the lease's heartbeat (stale limit 60 s)
        # gives up on the server first and ends the driver with its own line, which names no journal
        "LABELCURVE_OUTAGE_S": "2",
        "PYTHONUNBUFFERED": "1",
    }
    command = [str(BIN / "labelcurve"), "run", *GRID]
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "first.log"
    with mlflow_server(tmp_path, port) as url:
        with open(log, "w") as out, open(tmp_path / "first.err", "w") as err:
            driver = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 240
            while not SWEPT.search(log.read_text()):  # the first labeled run is in MLflow
                assert driver.poll() is None, f"the driver ended before its sweep: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"no sweep within 240 s: {log.read_text()[-2000:]}"
                time.sleep(0.1)
        except BaseException:
            driver.kill()
            raise
    killed = time.monotonic()  # the server is killed here, and stays down
    try:
        code = driver.wait(timeout=120)
    finally:
        driver.kill()
    gone_for = time.monotonic() - killed
    out, err = log.read_text(), (tmp_path / "first.err").read_text()
    assert code == 2, err[-3000:]

    (journal,) = journal_dir.glob("outage-*.jsonl")  # <study>-<study run id>.jsonl
    kept = [json.loads(line) for line in journal.read_text().splitlines()]
    assert kept and len({(k["spec"]["arm"], k["spec"]["budget"], k["spec"]["seed"]) for k in kept}) == len(kept)
    command_line = shlex.join(["labelcurve", "run", *GRID])
    assert err.count("finished runs kept in") == 1  # one line: the server, the runs kept, the command
    assert (
        f"Error: tracking server {url} unreachable for 2 s: {len(kept)} finished runs kept in {journal}; "
        f"when it is back, run `{command_line}` to record them without recomputing"
    ) in err.splitlines()
    assert err.count(f"tracking server {url} unreachable, retrying for up to 2 s") == 1  # said once
    assert gone_for < 60  # MLflow's own retries cut to seconds (its default: minutes per request)
    swept = [int(done) for done, _ in SWEPT.findall(out)]
    assert swept[-1] < 6  # it ended mid-sweep

    with mlflow_server(tmp_path, port) as url:  # restarted on the same store and port
        before = {r.data.tags["labelcurve.run_key"] for r in _store_runs(url) if r.info.status == "FINISHED"}
        assert before and not before & {f"{k['spec']['arm']}/{k['spec']['budget']}/{k['spec']['seed']}" for k in kept}
        rerun = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        lines = rerun.stdout.splitlines()
        recorded = f"journal: recorded {len(kept)} finished runs kept in {journal} (not recomputed)"
        skipped = f"sweep: {len(before)} of 6 runs already recorded, skipping them"
        assert recorded in lines and skipped in lines
        first_sweep = next(i for i, line in enumerate(lines) if SWEPT.match(line))
        assert lines.index(recorded) < lines.index(skipped) < first_sweep  # the journal first, then the rest
        computed = SWEPT.findall(rerun.stdout)
        assert {int(total) for _, total in computed} == {6 - len(before) - len(kept)}  # only the rest
        assert int(computed[-1][0]) == 6 - len(before) - len(kept)
        assert not journal.exists()  # emptied once MLflow had its runs

        runs = _store_runs(url)
        keys = [r.data.tags["labelcurve.run_key"] for r in runs]
        assert len(keys) == len(set(keys)) == 6  # every (arm, budget, seed) exactly once
        assert all(r.info.status == "FINISHED" for r in runs)
        by_key = {r.data.tags["labelcurve.run_key"]: r.data.metrics for r in runs}
        for entry in kept:  # recorded from the journal as computed before the outage, not computed again
            spec = entry["spec"]
            metrics = by_key[f"{spec['arm']}/{spec['budget']}/{spec['seed']}"]
            assert metrics["test_accuracy"] == entry["accuracy"]
            assert metrics["train_seconds"] == entry["train_seconds"]
