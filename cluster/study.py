"""One study, end to end: validate, pretrain, sweep, report; resumable through MLflow.

Everything that can be wrong with the input is checked in :func:`prepare` before Ray starts
or any image is decoded; :func:`run_study` then spends the compute.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from rich.console import Console

from cluster.config import StudyConfig
from cluster.console import make_console, progress_bars
from cluster.embeddings import StudyEmbeddings
from cluster.journal import Journal, replay
from cluster.lease import LeaseLost, StudyLease, check_lease, close_abandoned, study_lease
from cluster.prepare import Prepared, data_progress, prepare_study
from cluster.provenance import changed_since
from cluster.ray_runtime import connect
from cluster.registry import default_model_name, register, use_store
from cluster.results import study_results
from cluster.tracking import (
    BUDGET,
    FINETUNE,
    FINISHED,
    N_CLASSES,
    POOL_SIZE,
    PRETRAIN,
    PRETRAINING,
    TEST_COUNTS,
    StudyTracker,
    TrackingUnreachable,
)
from cluster.tracking_server import check_tracking_server, tracking_uri
from finetune.arms import BY_NAME, LINEAR, SCRATCH_START, SSL, TRANSFER, start_key
from finetune.budgets import check_budgets, labels_per_class, subset_indices
from finetune.grid import RunResult, RunSpec, grid
from finetune.report import (
    console_table,
    curve_png,
    curve_points,
    pretraining_png,
    study_subtitle,
    summary_table,
)
from finetune.report_html import report_html
from finetune.sweep import SweepInputs, make_start, run_sweep
from pretrain.backbone_specs import backbone_options
from pretrain.backbones import build_backbone
from pretrain.checkpoint import (
    ARTIFACT_DIR,
    BackboneCard,
    build_from_state,
    fetch,
    read_backbone,
    save_backbone,
)
from pretrain.data import DataPlan, StudyData, load_data, recorded_data, verification_record
from pretrain.knn import PROTOCOL as KNN_PROTOCOL
from pretrain.knn import knn_accuracy
from pretrain.manifest import POOL, TEST, to_parquet
from pretrain.train import effective_batch_size, pretrain


@dataclass
class StudyOutcome:
    """What :func:`run_study` returns to Python callers: the records and the answer."""

    parent_run_id: str
    experiment_id: str
    table: pd.DataFrame  # rows = budgets, columns = arms, "mean ± std"
    frame: pd.DataFrame  # one row per finished run
    ran: int
    skipped: int


VERIFIED = "verified.parquet"  # the study run's record of what verification found
RANDOM_INIT = "random-init"  # the name of the kNN reference: the weights pretraining started from


def _dataset_name(cfg: StudyConfig) -> str:
    return cfg.data.name if cfg.data.name != "folder" else Path(cfg.data.path).expanduser().resolve().name


def _options(cfg: StudyConfig, data: StudyData) -> dict:
    p = cfg.pretrain
    return backbone_options(p.backbone, data.image_size, p.cifar_stem, p.patch_size)


def _card(cfg: StudyConfig, data: StudyData, run_id: str = "") -> BackboneCard:
    """Architecture, input and normalization of the study's backbone."""
    return BackboneCard(
        backbone=cfg.pretrain.backbone,
        in_channels=data.channels,
        image_size=data.image_size,
        mean=list(data.mean),
        std=list(data.std),
        feature_dim=build_backbone(
            cfg.pretrain.backbone, data.channels, data.image_size, **_options(cfg, data)
        ).feature_dim,
        options=_options(cfg, data),
        method=cfg.pretrain.method,
        dataset=_dataset_name(cfg),
        epochs=cfg.pretrain.epochs,
        study=cfg.study,
        run_id=run_id,
    )


def _test_knn(backbones: dict, data: StudyData, embeddings: StudyEmbeddings) -> dict[str, float]:
    """kNN accuracy on the test split with the labeled pool as the bank, per named backbone
    (embedded in one pass over the images)."""
    features = embeddings.compute(backbones, data.mean, data.std)
    bank, queries = data.labels(POOL), data.labels(TEST)
    return {name: knn_accuracy(pool, bank, test, queries) for name, (pool, test) in features.items()}


def _pretrained_backbone(
    cfg, data, tracker: StudyTracker, parent: str, embeddings, console: Console, repeat: int = 0
) -> tuple[dict, dict[str, str]]:
    """The backbone weights of pretraining ``repeat`` (seed: the study seed + ``repeat``): from a
    FINISHED pretraining run of the same pretraining (:meth:`StudyConfig.pretraining_fingerprint`,
    in any study run of the study), else trained now, saved as safetensors with its card, and
    registered as a new model version; and the tags naming that run and version, for the labeled
    runs that start from it."""
    key = start_key(SSL, repeat, cfg.pretrain.repeats).replace(SSL, PRETRAIN, 1)
    seed = cfg.seed + repeat
    of = f" {repeat + 1}/{cfg.pretrain.repeats}" if cfg.pretrain.repeats > 1 else ""
    same = cfg.pretraining_fingerprint(data.digest, repeat)
    previous = tracker.children(parent, PRETRAIN).get(key)
    finished = reusable_pretraining(tracker, same, previous)
    if finished is not None:
        run, model = finished
        run_id, elsewhere = run.info.run_id, run.data.tags.get(MLFLOW_PARENT_RUN_ID, parent)
        why = "" if elsewhere == parent else f" of study run {elsewhere} (same data and pretraining settings)"
        console.print(f"pretraining{of}: reusing finished run {run_id}{why}" + (f" and {model}" if model else ""))
        state, _ = read_backbone(fetch(f"runs:/{run_id}"))
        return state, _start_tags(run_id, model)
    params = {f"pretrain.{k}": v for k, v in cfg.pretrain.model_dump().items()}
    run_name = f"pretrain-{cfg.pretrain.method}" + (f"-r{repeat}" if repeat else "")
    run_id = tracker.start_child(
        parent, PRETRAIN, key, run_name, {**params, "pretrain.seed": seed}, previous, {PRETRAINING: same}
    )
    p = cfg.pretrain
    console.print(
        f"pretraining{of}: {p.method} on {len(data.pretraining_items)} images, {p.num_workers} Ray Train workers, "
        f"{p.epochs} epochs (MLflow run {run_id})"
    )
    batch = effective_batch_size(p.batch_size, p.num_workers, len(data.pretraining_items))
    if batch < p.batch_size:
        console.print(
            f"pretraining: {len(data.pretraining_items)} images cannot fill {p.num_workers} x {p.batch_size}: "
            f"batch clamped to {batch} per worker (the learning rate scales with it)"
        )
    try:
        result = pretrain(
            p.model_dump(),
            data,
            name=f"{cfg.study}-pretrain-{same}",  # Ray Train resumes a run of this name: the same pretraining
            seed=seed,
            tracking={"uri": tracker.uri, "run_id": run_id},
            max_bad_fraction=cfg.data.max_bad_fraction,
            say=console.print,
        )
    except KeyboardInterrupt:
        tracker.finish(run_id, "KILLED")
        raise
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    check_lease()  # Ray Tune ends training gracefully on an interrupt: not a finished pretraining
    card = _card(cfg, data, run_id)
    torch.manual_seed(seed)  # the init pretraining started from
    initial = build_backbone(p.backbone, data.channels, data.image_size, **card.options)
    knn = _test_knn({SSL: build_from_state(result.backbone_state, card), RANDOM_INIT: initial}, data, embeddings)
    card, random_init = replace(card, knn_accuracy=round(knn[SSL], 4)), knn[RANDOM_INIT]
    metrics = {
        "pretrain_seconds": result.seconds,
        "test_knn_accuracy": card.knn_accuracy,
        "test_knn_accuracy_random_init": random_init,
    }
    if result.images_per_second:
        metrics["throughput/images_per_second"] = result.images_per_second
    metrics["unreadable_images"] = result.bad_images
    tracker.log_metrics(run_id, metrics)
    tracker.client.set_tag(run_id, "labelcurve.knn_protocol", KNN_PROTOCOL)
    if result.losses:
        title = f"{p.method} / {p.backbone} on {_dataset_name(cfg)}"
        tracker.log_artifacts(run_id, {"pretraining.png": pretraining_png(result.losses, result.knn, title)})
    with tempfile.TemporaryDirectory() as folder:
        tracker.client.log_artifacts(run_id, str(save_backbone(folder, result.backbone_state, card)), ARTIFACT_DIR)
    model = p.model_name or default_model_name(p.method, p.backbone, _dataset_name(cfg))
    version = register(tracker.client, model, run_id, card)
    tracker.client.set_model_version_tag(model, version, PRETRAINING, same)
    tracker.finish(run_id)
    console.print(
        f"pretraining{of}: done in {result.seconds:.0f} s, kNN accuracy {card.knn_accuracy:.3f} "
        f"(random init {random_init:.3f}); "
        f"registered models:/{model}/{version} (models:/{model}@latest)"
    )
    return result.backbone_state, _start_tags(run_id, f"models:/{model}/{version}")


def reusable_pretraining(tracker: StudyTracker, fingerprint: str, previous=None) -> tuple[Run, str | None] | None:
    """The finished pretraining run of ``fingerprint`` and its model version (``models:/NAME/V``),
    from any study run of the study; or ``previous``, this study run's pretraining run, when it
    finished under an earlier release (without the fingerprint tag). None: pretrain now."""
    found = tracker.finished_pretraining(fingerprint)
    if found is None and previous is not None and previous.info.status == FINISHED:
        found = previous
    if found is None:
        return None
    versions = tracker.client.search_model_versions(f"run_id = '{found.info.run_id}'")
    return found, f"models:/{versions[0].name}/{versions[0].version}" if versions else None


def _start_tags(run_id: str | None, model: str | None) -> dict[str, str]:
    """Tags of a labeled run naming what its backbone started from."""
    tags = {"labelcurve.start_run_id": run_id, "labelcurve.start_model": model}
    return {key: value for key, value in tags.items() if value}


def _starts(cfg, data, todo, tracker, parent, prepared: Prepared, console) -> tuple[dict, dict]:
    """The starting points the pending runs need, and the tags naming where each came from;
    pretrains (or reuses) only if an SSL arm is pending."""
    arms = [BY_NAME[spec.arm] for spec in todo]
    needed = {arm.start for arm in arms}
    probed = {arm.start for arm in arms if arm.head == LINEAR}
    starts, tags, options = {}, {}, _options(cfg, data)
    with progress_bars(console, "", transient=True) as advance:  # embedding a large pool takes minutes
        embeddings = StudyEmbeddings(tracker, parent, data, advance)

        def embed(start: str, name: str, mean, std):
            return (lambda backbone: embeddings.features(name, backbone, mean, std)) if start in probed else None

        repeats = cfg.pretrain.repeats
        for repeat in sorted({spec.seed % repeats for spec in todo if BY_NAME[spec.arm].start == SSL}):
            key = start_key(SSL, repeat, repeats)
            state, tags[key] = _pretrained_backbone(cfg, data, tracker, parent, embeddings, console, repeat)
            starts[key] = make_start(
                data, cfg.pretrain.backbone, options, state, data.mean, data.std, embed(SSL, key, data.mean, data.std)
            )
        if SCRATCH_START in needed:
            starts[SCRATCH_START] = make_start(data, cfg.pretrain.backbone, options, None, data.mean, data.std)
        if TRANSFER in needed:
            state, card = prepared.transfer
            init = prepared.init or ""
            tags[TRANSFER] = _start_tags(card.run_id or None, init if init.startswith("models:/") else None)
            starts[TRANSFER] = make_start(
                data,
                card.backbone,
                card.options,
                state,
                card.mean,
                card.std,
                embed(TRANSFER, TRANSFER, card.mean, card.std),
            )
        if embeddings.reused:
            console.print(
                f"embeddings: {embeddings.reused} feature sets of the pool and test split read back from the study run"
            )
    return starts, tags


@dataclass(frozen=True)
class LabeledRecord:
    """What each labeled run records beside its result: the subset it trained on (an MLflow
    dataset input) and the pretraining run and model version its start came from."""

    data: StudyData
    manifest: str  # the study run's manifest artifact
    split_seed: int
    starts: dict[str, dict[str, str]]  # start_key -> provenance tags
    repeats: int = 1


def _subset_input(record: LabeledRecord, spec: RunSpec) -> DatasetInput:
    items = record.data.items(POOL)
    subset = sorted(items[i] for i in subset_indices(record.data.labels(POOL), spec.budget, spec.seed))
    source = {"manifest": record.manifest, "split": POOL, "split_seed": record.split_seed, "budget": spec.budget}
    dataset = Dataset(
        name=f"labeled {spec.budget}/class, seed {spec.seed}",
        digest=hashlib.sha256("\n".join(subset).encode()).hexdigest()[:12],
        source_type="labelcurve-manifest",
        source=json.dumps({**source, "seed": spec.seed, "images": len(subset)}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def _log_result(
    tracker: StudyTracker, parent: str, result: RunResult, reuse, record: LabeledRecord | None = None
) -> None:
    """One labeled run with its real start and end; budget and label counts as numbers (metrics)."""
    spec = result.spec
    tags = {BUDGET: str(spec.budget)}
    metrics = {
        "test_accuracy": result.accuracy,
        "test_macro_f1": result.macro_f1,
        "train_seconds": result.train_seconds,
        "n_labels": result.n_labels,
    }
    if record is not None:
        tags.update(record.starts.get(start_key(BY_NAME[spec.arm].start, spec.seed, record.repeats), {}))
        metrics["labels_per_class"] = labels_per_class(spec.budget, result.n_labels, len(record.data.classes))
    name = f"{spec.arm}-{spec.budget}-s{spec.seed}"
    params = {"arm": spec.arm, "seed": spec.seed}
    run_id = tracker.start_child(parent, FINETUNE, spec.key, name, params, reuse, tags, result.started_at)
    tracker.log_metrics(run_id, metrics)
    if record is not None:
        tracker.client.log_inputs(run_id, datasets=[_subset_input(record, spec)])
    tracker.finish(run_id, end_time=result.ended_at)


def _description(cfg: StudyConfig, table: pd.DataFrame) -> str:
    """The study run's description in the MLflow UI: what was measured, and the table."""
    header = f"**{cfg.study}**: test accuracy, mean ± std over seeds {cfg.finetune.seeds}\n\n"
    rows = ["| labels/class | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    rows += [f"| {budget} | " + " | ".join(str(v) for v in row) + " |" for budget, row in table.iterrows()]
    return header + "\n".join(rows)


def run_study(cfg: StudyConfig, console: Console | None = None, prepared: Prepared | None = None) -> StudyOutcome:
    """Run (or resume) the study described by ``cfg``; returns the summary. ``prepared``: the
    outcome of :func:`cluster.prepare.prepare_study` when the caller already checked the input.
    The study's lease comes first (:mod:`cluster.lease`), so that a second driver is refused
    before it lists or decodes any data (the CLI takes it before its own checks when the study exists)."""
    console = console or make_console()
    uri = prepared.uri if prepared else tracking_uri()
    check_tracking_server(uri)
    with study_lease(uri, cfg.study, console.print) as lease:
        return _run_study(cfg, console, prepared or prepare_study(cfg, console), lease)


def _run_study(cfg: StudyConfig, console: Console, prepared: Prepared, lease: StudyLease) -> StudyOutcome:
    """:func:`run_study` under the study's lease."""
    if prepared.init:  # the fingerprint names the concrete version, not a moving alias
        cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"init": prepared.init})})
    use_store(prepared.uri)
    tracker = StudyTracker(prepared.uri, cfg.study)
    config_fingerprint = cfg.fingerprint("data", "pretrain", "finetune")
    data, verified = _verified_data(cfg, prepared, tracker, config_fingerprint, console)
    _report_data(console, prepared.plan, data)
    check_budgets(cfg.finetune.budgets, data.class_counts())  # on what decoded, not on what was listed
    parent, resumed = tracker.open_parent(config_fingerprint, data.digest, cfg.model_dump(mode="json"))
    journal = Journal.of(cfg.study, parent)
    try:
        close_abandoned(tracker, parent, console.print)
        if not resumed:
            tracker.log_artifacts(parent, {"manifest.parquet": to_parquet(prepared.plan.frame)})
            if (earlier := tracker.parent_with_other_data(config_fingerprint, data.digest)) is not None:
                console.print(
                    f"[yellow]data changed since study run {earlier} (files added, removed or modified): "
                    "starting a new study run[/yellow]"
                )
        if not verified:
            tracker.log_artifacts(parent, {VERIFIED: verification_record(data)})
        tracker.client.set_tag(parent, N_CLASSES, len(data.classes))
        tracker.client.set_tag(parent, POOL_SIZE, len(data.items(POOL)))
        tracker.client.set_tag(parent, TEST_COUNTS, json.dumps(data.test_counts()))
        console.print(f"MLflow: experiment '{cfg.study}', study run {parent}" + (" (resumed)" if resumed else ""))
        if resumed and (change := changed_since(tracker.client.get_run(parent).data.tags)):
            console.print(f"[yellow]{change}[/yellow]")
        specs = grid(cfg.finetune.arms, cfg.finetune.budgets, cfg.finetune.seeds)
        recorded = tracker.children(parent, FINETUNE)
        finished = {key for key, run in recorded.items() if run.info.status == FINISHED}
        replayed = replay(journal, finished, lambda r: _log_result(tracker, parent, r, recorded.get(r.spec.key)))
        if replayed:
            console.print(f"journal: recorded {len(replayed)} finished runs kept in {journal.path} (not recomputed)")
        finished.update(replayed)
        todo = [s for s in specs if s.key not in finished]
        skipped = len(specs) - len(todo) - len(replayed)
        if skipped:
            console.print(f"sweep: {skipped} of {len(specs)} runs already recorded, skipping them")
        if todo:
            connect(cfg.ray.address)
            starts, start_tags = _starts(cfg, data, todo, tracker, parent, prepared, console)
            manifest = f"runs:/{parent}/manifest.parquet"
            record = LabeledRecord(data, manifest, cfg.data.split_seed, start_tags, cfg.pretrain.repeats)
            inputs = SweepInputs.of(data, starts, cfg.pretrain.repeats)
            settings = cfg.finetune.model_dump()
            with progress_bars(console, "") as advance:
                for result in run_sweep(todo, inputs, settings):
                    check_lease()  # stop at once when another driver may have taken the study over
                    journal.keep(result)  # on local disk first: a tracking server outage loses no finished run
                    _log_result(tracker, parent, result, recorded.get(result.spec.key), record)
                    journal.drop(result.spec.key)
                    advance("sweep", 1, len(todo), f"{result.spec.key}: {result.accuracy:.3f}")
        frame, _ = study_results(tracker, parent)
        table = summary_table(frame, cfg.finetune.arms)
        tracker.log_series(parent, curve_points(frame))
        tracker.client.set_tag(parent, "mlflow.note.content", _description(cfg, table))
        title = f"{cfg.study}: test accuracy vs labels"
        setup = {"dataset": _dataset_name(cfg), "method": cfg.pretrain.method, "backbone": cfg.pretrain.backbone}
        counts = data.test_counts()  # the test split every accuracy is measured on, and its chance level
        tracker.log_artifacts(
            parent,
            {
                "curve.png": curve_png(frame, cfg.finetune.arms, title, test_counts=counts, **setup),
                "curve.svg": curve_png(frame, cfg.finetune.arms, title, fmt="svg", test_counts=counts, **setup),
                "report.html": report_html(
                    frame, cfg.finetune.arms, title, study_subtitle(**setup), test_counts=counts
                ),
                "results.csv": frame.to_csv(index=False).encode(),
            },
        )
        tracker.finish(parent)
    except TrackingUnreachable as error:  # the study run cannot be marked KILLED: the next run resumes it
        raise journal.kept(error) from None
    except BaseException:
        if not lease.lost:
            tracker.finish(parent, "KILLED")
            raise
        # a lost lease: the study run may be another driver's now, and the server unreachable; a
        # heartbeat that failed through an outage stops the driver before the outage wait does
        if len(journal):
            raise LeaseLost(journal.kept_line(lease.lost)) from None
        raise
    console.print(console_table(table, cfg.study, data.test_counts()))
    console.print(f"MLflow UI: run `labelcurve ui` and open {tracker.ui_url()}")
    return StudyOutcome(parent, tracker.experiment_id, table, frame, len(todo), skipped)


def _verified_data(
    cfg: StudyConfig, prepared: Prepared, tracker: StudyTracker, fingerprint: str, console: Console
) -> tuple[StudyData, bool]:
    """The verified data, and whether it was read back: from the study run of this config and
    manifest when an earlier invocation verified it (the manifest's sizes and modification times
    say the files are the same), else decoded now."""
    earlier = tracker.find_parent(fingerprint, prepared.plan.digest)
    if earlier is not None and VERIFIED in {a.path for a in tracker.client.list_artifacts(earlier)}:
        with tempfile.TemporaryDirectory() as folder:
            data = recorded_data(prepared.plan, tracker.download(earlier, VERIFIED, folder))
        console.print(f"data: verification of manifest {data.digest} read back from study run {earlier}")
        return data, True
    with data_progress(console) as progress:
        return load_data(prepared.plan, progress, cfg.data.stats_sample, cfg.data.split_seed), False


def _report_data(console: Console, plan: DataPlan, data: StudyData) -> None:
    """One line on the splits; one line per thing that was dropped, with the count and why."""
    counts = data.frame.split.value_counts()
    console.print(
        f"data: {data.description}: {len(data.classes)} classes, labeled pool {counts.get(POOL, 0)}, "
        f"test {counts.get(TEST, 0)}, pretraining pool {len(data.pretraining_items)} (manifest {data.digest})"
    )
    for line in data.summary():  # the test split per class after the duplicate guard, channel conversions
        console.print(line, markup=False, highlight=False)
    if plan.duplicates:
        console.print(
            f"[yellow]data: {plan.duplicates} files listed twice through symbolic links, counted once[/yellow]"
        )
    if data.skipped:
        first = ", ".join(data.skipped_files[:3])
        console.print(f"[yellow]data: skipped {data.skipped} unreadable labeled or test images ({first})[/yellow]")
    if data.leaked:
        console.print(
            f"[yellow]data: {data.leaked} test images are also in the pool (same file or same pixels): "
            "left out of the test split[/yellow]"
        )
