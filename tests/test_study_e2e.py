"""A tiny study through the real CLI: Ray in-process, Ray Train with 2 workers, a real MLflow store."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from pretrain.backbones import build_backbone

pytestmark = pytest.mark.slow

TINY = [
    "pretrain.epochs=2",
    "pretrain.batch_size=64",
    "pretrain.checkpoint_every=1",
    "finetune.budgets=[1, 2]",
    "finetune.seeds=[0, 1]",
    "finetune.steps=10",
]
ARMS = ["ssl-linear", "ssl-finetune", "scratch"]


def store(cwd: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    return client, client.get_experiment_by_name("tiny").experiment_id


def runs_by_role(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    runs = client.search_runs([experiment_id], max_results=1000)
    roles: dict[str, list] = {}
    for run in runs:
        roles.setdefault(run.data.tags.get("labelcurve.role"), []).append(run)
    return roles


def test_tiny_study_records_everything_and_resumes_without_duplicates(labelcurve, tmp_path):
    # system metrics every second: the tiny pretraining is over before MLflow's default sample
    result = labelcurve("run", "study=tiny", *TINY, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "pretrain epoch 2/2" in out + result.stderr
    assert "labels/class" in out and "ssl-linear" in out
    assert "labelcurve ui" in out

    client, experiment_id = store(tmp_path)
    roles = runs_by_role(client, experiment_id)
    (parent,) = roles["study"]
    (pre,) = roles["pretrain"]
    children = roles["finetune"]
    assert parent.info.status == pre.info.status == "FINISHED"
    assert len(children) == 3 * 2 * 2
    assert {(r.data.params["arm"], r.data.tags["labelcurve.budget"], r.data.params["seed"]) for r in children} == {
        (a, b, s) for a in ARMS for b in ("1", "2") for s in ("0", "1")
    }
    (version,) = client.search_model_versions("name='simclr-small_cnn-digits'")
    subsets: dict[tuple[str, str], set[str]] = {}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        metrics, tags = run.data.metrics, run.data.tags
        assert metrics["labels_per_class"] == int(tags["labelcurve.budget"])  # a number, sorted as one
        assert metrics["n_labels"] == 10 * metrics["labels_per_class"]
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert 0.0 <= metrics["test_macro_f1"] <= 1.0
        assert metrics["train_seconds"] > 0
        # the run spans the work it records (it used to be created after the work, lasting milliseconds)
        assert run.info.end_time - run.info.start_time >= 0.9 * metrics["train_seconds"] * 1000
        if run.data.params["arm"].startswith("ssl"):
            assert tags["labelcurve.start_run_id"] == pre.info.run_id
            assert tags["labelcurve.start_model"] == f"models:/simclr-small_cnn-digits/{version.version}"
        else:
            assert "labelcurve.start_run_id" not in tags
        (subset,) = run.inputs.dataset_inputs
        assert (
            subset.dataset.source_type == "labelcurve-manifest" and f"/{parent.info.run_id}/" in subset.dataset.source
        )
        subsets.setdefault((tags["labelcurve.budget"], run.data.params["seed"]), set()).add(subset.dataset.digest)
    assert all(len(digests) == 1 for digests in subsets.values())  # every arm of a seed: the same subset
    assert len({next(iter(d)) for d in subsets.values()}) == 4  # other budget or seed: another subset

    # Pretraining: one loss per epoch, the backbone as safetensors, and it is not the random init.
    losses = client.get_metric_history(pre.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(pre.info.run_id, "backbone")}
    assert {"backbone/model.safetensors", "backbone/card.json"} <= artifacts
    # 10 classes: a collapsed embedding votes by class frequency (about 0.1)
    assert 0.5 < pre.data.metrics["test_knn_accuracy"] <= 1.0
    assert 0.5 < pre.data.metrics["test_knn_accuracy_random_init"] <= 1.0
    # pretraining helps: the quickstart's 60 epochs reach 0.920 against 0.756, these 2 epochs 0.846 (one run)
    assert pre.data.metrics["test_knn_accuracy"] > pre.data.metrics["test_knn_accuracy_random_init"]
    # the online kNN on a labeled slice of the pool: random init at step 0, then every epoch
    assert [m.step for m in client.get_metric_history(pre.info.run_id, "online_knn/accuracy")] == [0, 1, 2]
    # MLflow's system metrics, sampled by the first worker of the (one) node while it trained
    assert 0 <= pre.data.metrics["system/node0/cpu_utilization_percentage"] <= 100  # psutil: 0 at its first sample
    assert pre.data.metrics["system/node0/system_memory_usage_megabytes"] > 0
    png = Path(client.download_artifacts(pre.info.run_id, "pretraining.png", str(tmp_path))).read_bytes()
    assert Image.open(io.BytesIO(png)).size[0] > 400
    state = load_file(client.download_artifacts(pre.info.run_id, "backbone/model.safetensors", str(tmp_path)))
    assert version.run_id == pre.info.run_id and version.tags["in_channels"] == "1"
    backbone = build_backbone("small_cnn", 1)
    backbone.load_state_dict(state)
    torch.manual_seed(0)
    assert any(not torch.equal(v, build_backbone("small_cnn", 1).state_dict()[k]) for k, v in state.items())

    # The parent run draws the curve: accuracy/<arm> at steps 1 and 2; curve.png and results.csv.
    for arm in ARMS:
        history = client.get_metric_history(parent.info.run_id, f"accuracy/{arm}")
        assert sorted(m.step for m in history) == [1, 2]
        assert all(m.value == round(m.value, 4) for m in history)
        for stat in ("std", "min", "max"):
            assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, f"accuracy_{stat}/{arm}")) == [
                1,
                2,
            ]
    description = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert "| labels/class | ssl-linear | ssl-finetune | scratch |" in description
    assert {"report.html", "curve.svg"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    frame = pd.read_csv(client.download_artifacts(parent.info.run_id, "results.csv", str(tmp_path)))
    assert len(frame) == 12 and set(frame.arm) == set(ARMS)
    png = Path(client.download_artifacts(parent.info.run_id, "curve.png", str(tmp_path))).read_bytes()
    assert Image.open(io.BytesIO(png)).size[0] > 400

    # The frozen features of the pool and test split are kept with the study run, once per backbone.
    kept = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "embeddings"))
    assert [path.split("/")[1].split("-")[0] for path in kept] == ["random", "ssl"]
    ssl = np.load(client.download_artifacts(parent.info.run_id, kept[1], str(tmp_path)))
    assert ssl["pool"].shape == (1257, 128) and ssl["test"].shape == (540, 128)  # digits: 70/30 split
    assert np.isfinite(ssl["pool"]).all()

    assert_ui_serves(tmp_path, experiment_id, parent.info.run_id, n_runs=14)

    # The README's Python example runs as written in the study's directory.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("<!-- example: load_backbone -->\n```python\n")[1].split("```")[0]
    ran = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == "torch.Size([8, 128])"

    # Two budgets are too few for a curve; unknown studies and impossible targets are named.
    for args, fragment in [
        (("predict", "--target", "0.9", "--study", "tiny"), "arm 'ssl-linear': a curve needs at least 3 budgets"),
        (("predict", "--target", "0.9", "--study", "nope"), "no study named 'nope'"),
    ]:
        refused = labelcurve(*args)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().startswith("Error: ") and fragment in refused.stderr

    # Same command again: every run is found and skipped; nothing is recorded twice.
    again = labelcurve("run", "study=tiny", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "12 of 12 runs already recorded" in again.stdout
    assert f"data: verification of manifest {parent.data.tags['labelcurve.data_digest']} read back" in again.stdout
    roles = runs_by_role(client, experiment_id)
    assert len(roles["finetune"]) == 12 and len(roles["pretrain"]) == 1 and len(roles["study"]) == 1
    for arm in ARMS:
        assert len(client.get_metric_history(parent.info.run_id, f"accuracy/{arm}")) == 2

    # A larger grid adds only the new runs and reuses the finished pretraining.
    more = labelcurve(
        "run", "study=tiny", *TINY[:-3], "finetune.budgets=[1, 2, 5]", "finetune.seeds=[0, 1]", "finetune.steps=10"
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "reusing finished run" in more.stdout
    assert "embeddings: 1 feature sets of the pool and test split read back from the study run" in more.stdout
    assert len(client.list_artifacts(parent.info.run_id, "embeddings")) == 2  # nothing computed twice
    roles = runs_by_role(client, experiment_id)
    assert len(roles["finetune"]) == 18 and len(roles["pretrain"]) == 1

    # With three budgets the study answers: forecast logged to the study run, plan and errors.
    answer = labelcurve("predict", "--target", "0.5", "--study", "tiny")
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "labels needed" in answer.stdout and "levers: labels for accuracy 0.5" in answer.stdout
    parent_run = client.get_run(parent.info.run_id)
    assert "ceiling/ssl-linear" in parent_run.data.metrics
    prediction = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "prediction.json", str(tmp_path))).read_text()
    )
    assert [lever["arm"] for lever in prediction["levers"]][:1] == ["ssl-linear"]
    printed = " ".join(answer.stdout.split())
    for arm, said in prediction["arms"].items():  # every arm has a forecast or one line why not
        assert "labels_needed" in said or f"{arm}: no forecast: {said['no_forecast']}" in printed
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"prediction.png", "prediction.json", "report.html"} <= artifacts
    page = Path(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))).read_text()
    assert '<table id="levers">' in page
    planned = labelcurve("plan", "--target", "0.5", "--study", "tiny", "--cost-per-label", "0.1")
    assert planned.returncode == 0 and "label up to" in planned.stdout, planned.stderr[-3000:]
    chance = labelcurve("predict", "--target", "0.1")  # the store's only study, without --study
    assert chance.returncode == 2 and "at or below chance" in chance.stderr
    no_cut = labelcurve("backtest")
    assert "fitting on budgets of at most 125 labels (10% of the labeled pool, 1257 labels)" in no_cut.stdout
    assert no_cut.returncode == 2 and "no measured budget above the cut of 125 labels" in no_cut.stderr


def assert_ui_serves(cwd: Path, experiment_id: str, parent_id: str, n_runs: int) -> None:
    """`labelcurve ui` serves the same runs (by the names the CLI prints) and the curve plot."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "labelcurve"), "ui", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        body = json.dumps({"experiment_ids": [experiment_id], "max_results": 1000}).encode()
        for _ in range(60):
            try:
                request = urllib.request.Request(
                    f"{base}/ajax-api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
                )
                runs = json.load(urllib.request.urlopen(request, timeout=5))["runs"]
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("labelcurve ui did not answer within 60 s")
        names = {r["info"]["run_name"] for r in runs}
        assert len(runs) == n_runs
        assert {"tiny", "pretrain-simclr", "ssl-linear-1-s0", "scratch-2-s1"} <= names
        with urllib.request.urlopen(f"{base}/get-artifact?path=curve.png&run_uuid={parent_id}", timeout=10) as reply:
            assert reply.headers["Content-Type"] == "image/png"
            assert reply.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and every process it started
        server.wait(timeout=30)


def test_repeated_pretraining_pairs_each_seed_with_one_pretraining(labelcurve, tmp_path):
    """pretrain.repeats=2: two pretrainings (seeds 0 and 1); labeled seeds 0 and 2 start from the
    first, seed 1 from the second, so the spread over seeds holds the pretraining's."""
    result = labelcurve(
        "run",
        "study=tiny",
        "pretrain.repeats=2",
        "pretrain.epochs=1",
        "pretrain.batch_size=64",
        "finetune.arms=[ssl-linear, scratch]",
        "finetune.budgets=[1, 2]",
        "finetune.seeds=[0, 1, 2]",
        "finetune.steps=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretraining 2/2" in result.stdout
    client, experiment_id = store(tmp_path)
    roles = runs_by_role(client, experiment_id)
    pretrainings = {r.data.tags["labelcurve.run_key"]: r for r in roles["pretrain"]}
    assert sorted(pretrainings) == ["pretrain", "pretrain-r1"]
    assert {k: r.data.params["pretrain.seed"] for k, r in pretrainings.items()} == {"pretrain": "0", "pretrain-r1": "1"}
    assert all(r.info.status == "FINISHED" for r in pretrainings.values())
    assert len(client.search_model_versions("name='simclr-small_cnn-digits'")) == 2
    first, second = pretrainings["pretrain"].info.run_id, pretrainings["pretrain-r1"].info.run_id
    started_from = {
        int(r.data.params["seed"]): r.data.tags["labelcurve.start_run_id"]
        for r in roles["finetune"]
        if r.data.params["arm"] == "ssl-linear"
    }
    assert started_from == {0: first, 1: second, 2: first}
    # two different backbones, not one registered twice
    states = []
    for run in (first, second):
        (tmp_path / run).mkdir()
        states.append(load_file(client.download_artifacts(run, "backbone/model.safetensors", str(tmp_path / run))))
    first_state, second_state = states
    assert any(not torch.equal(v, second_state[k]) for k, v in first_state.items())


def _interrupt_mid_sweep(command, cwd: Path, log: Path, sig: int, after: int) -> subprocess.Popen:
    """Start the driver, wait until ``after`` labeled runs are FINISHED, send ``sig`` once."""
    with open(log, "w") as out:
        driver = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    finished = 0
    while time.monotonic() < deadline and finished < after:
        time.sleep(1)
        # Read the store only once the driver created it: concurrent creation races MLflow's migrations.
        if "MLflow: experiment" in log.read_text() and driver.poll() is None:
            try:
                client, experiment_id = store(cwd)
                runs = runs_by_role(client, experiment_id).get("finetune", [])
                finished = sum(r.info.status == "FINISHED" for r in runs)
            except Exception:  # the store is still being created
                finished = 0
    assert driver.poll() is None, f"the study ended before it could be interrupted: {log.read_text()[-2000:]}"
    assert finished >= after
    driver.send_signal(sig)
    return driver


def test_interrupted_or_killed_driver_resumes_and_duplicates_nothing(tmp_path):
    args = ["study=tiny", *TINY[:-3], "finetune.budgets=[1, 2, 5, 10]", "finetune.seeds=[0, 1]", "finetune.steps=60"]
    command = [str(Path(sys.executable).parent / "labelcurve"), "run", *args]

    # One Ctrl+C (SIGINT) during the sweep stops the study: exit 130, how to resume, nothing RUNNING.
    driver = _interrupt_mid_sweep(command, tmp_path, tmp_path / "first.log", signal.SIGINT, after=4)
    try:
        assert driver.wait(timeout=60) == 130
    finally:
        driver.kill()
    assert "run the same command again to resume" in (tmp_path / "first.log").read_text()
    client, experiment_id = store(tmp_path)
    roles = runs_by_role(client, experiment_id)
    assert roles["study"][0].info.status == "KILLED" and roles["pretrain"][0].info.status == "FINISHED"
    assert not [r for r in roles["finetune"] if r.info.status == "RUNNING"]

    # A SIGKILLed driver loses only the runs in flight.
    driver = _interrupt_mid_sweep(command, tmp_path, tmp_path / "second.log", signal.SIGKILL, after=8)
    driver.wait()
    before = sum(r.info.status == "FINISHED" for r in runs_by_role(client, experiment_id)["finetune"])
    assert 8 <= before < 24

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{before} of 24 runs already recorded" in resumed.stdout
    roles = runs_by_role(client, experiment_id)
    keys = [r.data.tags["labelcurve.run_key"] for r in roles["finetune"]]
    assert len(keys) == len(set(keys)) == 24
    assert all(r.info.status == "FINISHED" for r in roles["finetune"])
    assert len(roles["pretrain"]) == 1 and len(roles["study"]) == 1
    assert roles["study"][0].info.status == "FINISHED"
