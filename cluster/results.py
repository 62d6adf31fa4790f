"""A study's finished labeled runs read back from MLflow, as the results frame every answer starts from.

Apart from the study driver on purpose: `labelcurve predict`, `plan` and `backtest` read results
without importing torch, Ray or Lightning.
"""

from __future__ import annotations

import pandas as pd

from cluster.tracking import BUDGET, FINETUNE, FINISHED, N_CLASSES, StudyTracker
from finetune.grid import RunResult, RunSpec
from finetune.report import results_frame


def recorded(run) -> RunResult:
    """A finished child run read back from MLflow (runs of the first release kept budget and
    label count as params)."""
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    budget = t.get(BUDGET, p.get("labels_per_class"))
    spec = RunSpec(p["arm"], budget if budget == "all" else int(budget), int(p["seed"]))
    n_labels = int(m["n_labels"]) if "n_labels" in m else int(p["n_labels"])
    return RunResult(spec, n_labels, m["test_accuracy"], m["test_macro_f1"], m["train_seconds"])


def study_results(tracker: StudyTracker, parent: str) -> tuple[pd.DataFrame, int]:
    """Every finished labeled run of a study (also from earlier invocations), and its class count."""
    n_classes = int(tracker.client.get_run(parent).data.tags[N_CLASSES])
    runs = [r for r in tracker.children(parent, FINETUNE).values() if r.info.status == FINISHED]
    return results_frame([recorded(r) for r in runs], n_classes), n_classes
