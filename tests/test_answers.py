"""`labelcurve predict` and `plan` on a recorded study in a real SQLite MLflow store, without Ray:
an interrupted study (arms at different budgets) and an arm that learned nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from cluster.tracking import BUDGET, FINETUNE, N_CLASSES, POOL_SIZE, ROLE, RUN_KEY, STUDY, TEST_COUNTS

CLASSES = 10
# ssl-linear stopped after 10 per class (an interrupted sweep); scratch went on to 50; "broken" labels learned nothing
MEANS = {
    "ssl-linear": {1: 0.62, 2: 0.74, 5: 0.86, 10: 0.91},
    "scratch": {1: 0.35, 2: 0.48, 5: 0.66, 10: 0.78, 20: 0.86, 50: 0.92},
    "transfer-linear": {1: 0.1, 2: 0.1, 5: 0.1, 10: 0.1, 20: 0.1, 50: 0.1},
}


@pytest.fixture
def recorded_study(tmp_path) -> str:
    """A study run with finished labeled runs (3 seeds per budget), as `labelcurve run` records them."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("interrupted")
    counts = json.dumps({str(c): 30 for c in range(CLASSES)})
    tags = {ROLE: STUDY, N_CLASSES: str(CLASSES), POOL_SIZE: "600", TEST_COUNTS: counts}
    parent = client.create_run(experiment, run_name="interrupted", tags=tags).info.run_id
    rng = np.random.default_rng(0)
    for arm, budgets in MEANS.items():
        for per_class, mean in budgets.items():
            for seed in range(3):
                key = f"{arm}/{per_class}/{seed}"
                run = client.create_run(
                    experiment,
                    run_name=key,
                    tags={MLFLOW_PARENT_RUN_ID: parent, ROLE: FINETUNE, RUN_KEY: key, BUDGET: str(per_class)},
                ).info.run_id
                client.log_param(run, "arm", arm)
                client.log_param(run, "seed", str(seed))
                accuracy = float(np.clip(mean + rng.normal(0, 0.01), 0, 1))
                for name, value in [("test_accuracy", accuracy), ("test_macro_f1", accuracy)]:
                    client.log_metric(run, name, value)
                client.log_metric(run, "n_labels", per_class * CLASSES)
                client.log_metric(run, "train_seconds", 1.0)
                client.set_terminated(run, "FINISHED")
    return parent


@pytest.mark.slow
def test_predict_and_plan_answer_an_interrupted_study(recorded_study, labelcurve, tmp_path):
    answer = labelcurve("predict", "--target", "0.9", "--study", "interrupted")
    assert answer.returncode == 0, answer.stderr[-3000:]
    said = " ".join(answer.stdout.split())
    assert "ssl-linear: no finished runs at 200 (20/class), 500 (50/class) labels" in said
    assert "transfer-linear: no forecast: nothing learned" in said, answer.stdout
    assert "levers: labels for accuracy 0.9" in said
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    prediction = json.loads(
        Path(client.download_artifacts(recorded_study, "prediction.json", str(tmp_path))).read_text()
    )
    # ssl-linear measured 0.86 at 5/class and 0.91 at 10/class: 0.9 needs 51-100 labels, reached at 100
    needed = prediction["arms"]["ssl-linear"]["labels_needed"]
    assert needed["reached_at"] == 100 and 50 <= needed["low"] <= needed["point"] <= needed["high"] <= 100
    # scratch crossed 0.9 between 20 (0.86) and 50 per class (0.92): the lever is worth 2x to 10x
    levers = {lever["arm"]: lever for lever in prediction["levers"]}
    assert 200 / 100 <= levers["ssl-linear"]["multiplier"] <= 500 / 50
    assert levers["transfer-linear"]["labels"] is None and levers["transfer-linear"]["note"].startswith("nothing")
    assert prediction["missing"] == {"ssl-linear": [200, 500]}
    page = Path(client.download_artifacts(recorded_study, "report.html", str(tmp_path))).read_text()
    assert '<table id="levers">' in page and "pretraining on the pool, linear probe" in page
    assert "test split: 300 images" in page

    planned = labelcurve("plan", "--target", "0.9", "--study", "interrupted")
    assert planned.returncode == 0, planned.stderr[-3000:]
    said = " ".join(planned.stdout.split())
    assert "already reached: measured at 100 labels" in said  # ssl-linear: no round
    planned = labelcurve("plan", "--target", "0.97", "--study", "interrupted")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "(past the pool of 600)" in " ".join(planned.stdout.split())


def test_answers_read_results_without_torch_or_ray():
    """predict, plan and backtest fit curves to recorded numbers: they import no training stack."""
    heavy = "('torch', 'ray', 'pytorch_lightning')"
    probe = f"import sys, cluster.answers; print(sorted(m for m in {heavy} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
