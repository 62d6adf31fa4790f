"""One study, end to end: validate, pretrain, sweep, report; resumable through MLflow.

Everything that can be wrong with the input is checked in :func:`prepare` before Ray starts
or any image is decoded; :func:`run_study` then spends the compute.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from safetensors.torch import load_file, save

from cluster.config import StudyConfig
from cluster.console import make_console
from cluster.ray_runtime import check_ray_address, connect
from cluster.tracking import FINETUNE, FINISHED, N_CLASSES, PRETRAIN, StudyTracker, check_tracking_server, tracking_uri
from finetune.arms import SSL_ARMS
from finetune.budgets import check_budgets
from finetune.report import curve_png, curve_points, results_frame, summary_table
from finetune.sweep import RunResult, RunSpec, grid, prepare_inputs, run_sweep
from pretrain.data import DataPlan, StudyData, load_data, plan_data
from pretrain.train import BACKBONE_FILE, pretrain

MODEL_CARD = "backbone.json"


@dataclass
class StudyOutcome:
    """What :func:`run_study` returns to Python callers: the records and the answer."""

    parent_run_id: str
    experiment_id: str
    table: pd.DataFrame  # rows = budgets, columns = arms, "mean ± std"
    frame: pd.DataFrame  # one row per finished run
    ran: int
    skipped: int


def prepare(cfg: StudyConfig) -> tuple[str, DataPlan]:
    """All bad-input checks, cheap: tracking store reachable, data present, budgets possible."""
    uri = tracking_uri()
    check_tracking_server(uri)
    check_ray_address(cfg.ray.address)
    plan = plan_data(cfg.data)
    check_budgets(cfg.finetune.budgets, plan.class_counts())
    return uri, plan


def _model_card(cfg: StudyConfig, data: StudyData, run_id: str) -> dict:
    """What a later user needs to reuse the backbone: architecture, input and normalization."""
    return {
        "method": cfg.pretrain.method,
        "backbone": cfg.pretrain.backbone,
        "in_channels": data.channels,
        "image_size": data.image_size,
        "mean": list(data.mean),
        "std": list(data.std),
        "epochs": cfg.pretrain.epochs,
        "dataset": cfg.data.name if cfg.data.name == "digits" else cfg.data.path,
        "study": cfg.study,
        "run_id": run_id,
    }


def _pretrained_backbone(cfg, data, tracker: StudyTracker, parent: str, console: Console) -> dict:
    """The backbone weights: from a FINISHED pretraining run of this study, else trained now."""
    previous = tracker.children(parent, PRETRAIN).get(PRETRAIN)
    if previous is not None and previous.info.status == FINISHED:
        console.print(f"pretraining: reusing finished run {previous.info.run_id}")
        with tempfile.TemporaryDirectory() as folder:
            return load_file(str(tracker.download(previous.info.run_id, BACKBONE_FILE, folder)))
    params = {f"pretrain.{k}": v for k, v in cfg.pretrain.model_dump().items()}
    run_id = tracker.start_child(parent, PRETRAIN, PRETRAIN, f"pretrain-{cfg.pretrain.method}", params, previous)
    p = cfg.pretrain
    console.print(
        f"pretraining: {p.method} on {len(data.unlabeled)} images, {p.num_workers} Ray Train workers, "
        f"{p.epochs} epochs (MLflow run {run_id})"
    )
    try:
        result = pretrain(
            p.model_dump(),
            data,
            name=f"{cfg.study}-{cfg.fingerprint('data', 'pretrain')}",
            seed=cfg.seed,
            tracking={"uri": tracker.uri, "run_id": run_id},
        )
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    card = _model_card(cfg, data, run_id)
    tracker.log_metrics(run_id, {"pretrain_seconds": result.seconds})
    tracker.log_artifacts(
        run_id, {BACKBONE_FILE: save(result.backbone_state), MODEL_CARD: json.dumps(card, indent=2).encode()}
    )
    tracker.finish(run_id)
    console.print(f"pretraining: done in {result.seconds:.0f} s")
    return result.backbone_state


def _recorded(run) -> RunResult:
    """A finished child run read back from MLflow."""
    p, m = run.data.params, run.data.metrics
    budget = p["labels_per_class"]
    spec = RunSpec(p["arm"], budget if budget == "all" else int(budget), int(p["seed"]))
    return RunResult(spec, int(p["n_labels"]), m["test_accuracy"], m["test_macro_f1"], m["train_seconds"])


def study_results(tracker: StudyTracker, parent: str) -> tuple[pd.DataFrame, int]:
    """Every finished labeled run of a study (also from earlier invocations), and its class count."""
    n_classes = int(tracker.client.get_run(parent).data.tags[N_CLASSES])
    runs = [r for r in tracker.children(parent, FINETUNE).values() if r.info.status == FINISHED]
    return results_frame([_recorded(r) for r in runs], n_classes), n_classes


def _log_result(tracker: StudyTracker, parent: str, result: RunResult, reuse) -> None:
    spec = result.spec
    params = {"arm": spec.arm, "labels_per_class": spec.budget, "n_labels": result.n_labels, "seed": spec.seed}
    run_id = tracker.start_child(parent, FINETUNE, spec.key, f"{spec.arm}-{spec.budget}-s{spec.seed}", params, reuse)
    tracker.log_metrics(
        run_id,
        {"test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1, "train_seconds": result.train_seconds},
    )
    tracker.finish(run_id)


def run_study(cfg: StudyConfig, console: Console | None = None) -> StudyOutcome:
    """Run (or resume) the study described by ``cfg``; returns the summary."""
    console = console or make_console()
    uri, plan = prepare(cfg)
    data = load_data(plan)
    if data.skipped:
        console.print(f"[yellow]skipped {data.skipped} unreadable images[/yellow]")
    console.print(
        f"data: {plan.source}: {len(data.classes)} classes, labeled pool {len(data.pool)}, "
        f"test {len(data.test)}, pretraining pool {len(data.unlabeled)}"
    )
    tracker = StudyTracker(uri, cfg.study)
    parent, resumed = tracker.open_parent(cfg.fingerprint("data", "pretrain", "finetune"), cfg.model_dump(mode="json"))
    tracker.client.set_tag(parent, N_CLASSES, len(data.classes))
    console.print(f"MLflow: experiment '{cfg.study}', study run {parent}" + (" (resumed)" if resumed else ""))
    try:
        specs = grid(cfg.finetune.arms, cfg.finetune.budgets, cfg.finetune.seeds)
        recorded = tracker.children(parent, FINETUNE)
        finished = {key for key, run in recorded.items() if run.info.status == FINISHED}
        todo = [s for s in specs if s.key not in finished]
        skipped = len(specs) - len(todo)
        if skipped:
            console.print(f"sweep: {skipped} of {len(specs)} runs already recorded, skipping them")
        state = None
        needs_ssl = any(s.arm in SSL_ARMS for s in todo)
        if todo:
            connect(cfg.ray.address)
        if needs_ssl:
            state = _pretrained_backbone(cfg, data, tracker, parent, console)
        if todo:
            inputs = prepare_inputs(data, cfg.pretrain.backbone, state)
            settings = cfg.finetune.model_dump()
            columns = [
                TextColumn("sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            ]
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("", total=len(todo))
                for result in run_sweep(todo, inputs, settings):
                    _log_result(tracker, parent, result, recorded.get(result.spec.key))
                    progress.update(task, advance=1, description=f"{result.spec.key}: {result.accuracy:.3f}")
        frame, _ = study_results(tracker, parent)
        table = summary_table(frame, cfg.finetune.arms)
        tracker.log_series(parent, {f"accuracy/{arm}": points for arm, points in curve_points(frame).items()})
        tracker.log_artifacts(
            parent,
            {
                "curve.png": curve_png(frame, cfg.finetune.arms, f"{cfg.study}: test accuracy vs labels"),
                "results.csv": frame.to_csv(index=False).encode(),
            },
        )
        tracker.finish(parent)
    except BaseException:
        tracker.finish(parent, "KILLED")
        raise
    _print_table(console, table, cfg.study)
    console.print(f"MLflow UI: run `labelcurve ui` and open {tracker.ui_url()}")
    return StudyOutcome(parent, tracker.experiment_id, table, frame, len(todo), skipped)


def _print_table(console: Console, table, study: str) -> None:
    view = Table(title=f"{study}: test accuracy (mean ± std over seeds)")
    view.add_column("labels/class", justify="right")
    for arm in table.columns:
        view.add_column(arm, justify="right")
    for label, row in table.iterrows():
        view.add_row(str(label), *[str(v) for v in row.tolist()])
    console.print(view)
