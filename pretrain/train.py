"""Distributed pretraining: a Lightning SSL module trained by Ray Train's ``TorchTrainer``.

The driver calls :func:`pretrain`; each Ray Train worker runs :func:`_train_worker` on its shard
of the pretraining pool: a Ray Data stream, or its own slice of the same epochs, decoded and
augmented in the worker (:mod:`pretrain.stream`). Checkpoints go to ``storage_path`` (a shared path or
``s3://`` on a multi-node cluster): a re-run with the same name, or a worker group restarted after
a failure, resumes from the latest one. Only plain data crosses into the workers: the pretraining
settings as a dict and a tracking handle ``{"uri", "run_id"}`` so that rank 0 logs into the one
run the driver created.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytorch_lightning as pl
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split

from pretrain.backbone_specs import backbone_options
from pretrain.backbones import build_backbone, embed
from pretrain.data import DataError, StudyData
from pretrain.errors import ResourceError
from pretrain.knn import knn_accuracy
from pretrain.manifest import POOL
from pretrain.method_options import chosen_options
from pretrain.methods import METHODS, build_method
from pretrain.run_log import RunLog, bound_http_retries
from pretrain.seeds import rank_seed
from pretrain.stream import LocalBatches, ShardBatches, pretraining_dataset, steps_per_epoch, warm_read_workers
from pretrain.views import ViewSettings, normalize

log = logging.getLogger("labelcurve.pretrain")

LIGHTNING_CKPT = "checkpoint.ckpt"
PROGRESS_EVERY_S = 60.0  # seconds between progress lines within an epoch
LOCAL_MAX_IMAGES = 20_000  # a local worker keeps the images it decoded for pools up to this size
LOCAL_MAX_BYTES = 1 << 30  # ... whose decoded copy fits in this
BACKBONE_FILE = "backbone.safetensors"


@dataclass(frozen=True)
class PretrainResult:
    """The pretrained backbone weights, where Ray Train kept the checkpoint, and how it went."""

    backbone_state: dict[str, torch.Tensor]
    checkpoint_path: str
    seconds: float
    losses: list[float] = field(default_factory=list)  # per epoch, of this invocation
    knn: list[float] = field(default_factory=list)  # online kNN: random init, then per epoch
    images_per_second: float | None = None  # all workers, epochs after the first
    bad_images: int = 0  # pretraining images that failed to decode (summed over epochs)
    rates: list[float] = field(default_factory=list)  # images/s per epoch of this invocation, all workers
    threads: int | None = None  # torch's intra-op threads in a worker: the CPUs it reserved


class TooManyBadImages(DataError):
    """More pretraining images failed to decode than ``max_bad_fraction`` allows."""


class _EpochReport(pl.Callback):
    """Per epoch: progress line, MLflow metrics (rank 0), online kNN, checkpoint to Ray Train.

    The online kNN accuracy (Wu et al., 2018) embeds a small labeled subset of the pool with the
    current backbone, on rank 0 only, so that users watch representation quality while the run
    goes; epoch 0 is the random init. Nothing from the test split is used.
    """

    def __init__(self, every: int, tracking: dict | None, knn: dict | None, batches: ShardBatches, bad: float) -> None:
        self.every, self.tracking, self.knn = every, tracking, knn
        self.batches, self.max_bad_fraction = batches, bad
        self.run_log: RunLog | None = None
        self.started = time.perf_counter()
        self.losses: list[float] = []
        self.rates: list[float] = []  # images/s of every epoch, all workers
        self.images: list[int] = []  # images of every epoch, all workers
        self.knn_history: list[float] = []
        self.steady_seconds = 0.0  # epochs after the first: no warm-up, worker start or compilation
        self.steady_images = 0

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if not self.tracking:
            return
        if self.run_log is None:
            self.run_log = RunLog(self.tracking["uri"], self.tracking["run_id"])
        self.run_log.log(metrics, step)

    def _knn(self, module) -> float | None:
        if not self.knn:
            return None
        k = self.knn
        bank, queries = embed(module.backbone, k["bank"]), embed(module.backbone, k["queries"])
        module.backbone.train()
        accuracy = knn_accuracy(bank, k["bank_labels"], queries, k["query_labels"])
        self.knn_history.append(accuracy)
        return accuracy

    def on_train_start(self, trainer, module) -> None:
        if trainer.global_rank == 0 and trainer.current_epoch == 0 and (accuracy := self._knn(module)) is not None:
            log.info("pretrain epoch 0/%d  kNN %.3f (random init)", trainer.max_epochs, accuracy)
            self._log({"online_knn/accuracy": accuracy}, 0)

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = self.last_line = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        """A line a minute within an epoch: on a pool of real size one epoch takes many minutes."""
        now = time.perf_counter()
        if trainer.global_rank != 0 or now - self.last_line < PROGRESS_EVERY_S:
            return
        self.last_line = now
        done, planned = self.batches.images * trainer.world_size, self.batches.planned * trainer.world_size
        log.info(
            "pretrain epoch %d/%d  %d/%d images (%.0f%%)  %.0f img/s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            done,
            planned,
            100 * done / max(planned, 1),
            done / (now - self.started),
        )

    def teardown(self, trainer, module, stage: str) -> None:  # also when training raised
        if self.run_log is not None and not self.run_log.flush():
            log.warning(
                "%d metrics of this run could not be recorded: the tracking server is away", len(self.run_log.pending)
            )

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        loss = float(trainer.callback_metrics["train/loss"])
        seconds = time.perf_counter() - self.started
        self.losses.append(loss)
        self.images.append(self.batches.images * trainer.world_size)  # equal on every rank
        if len(self.losses) > 1:
            self.steady_seconds += seconds
            self.steady_images += self.images[-1]
        bad = _sum_over_ranks(self.batches.bad)
        self.rates.append(self.images[-1] / seconds)
        metrics = {"epoch": epoch, "loss": loss, "losses": list(self.losses), "rates": self.rates, "bad_images": bad}
        if bad > self.max_bad_fraction * sum(self.images):
            # stop, not raise: a raised error would make Ray Train restart the group and fail again
            metrics["bad_items"] = self.batches.bad_items
            trainer.should_stop = True
        if trainer.global_rank == 0:
            rate = self.rates[-1]
            accuracy = self._knn(module)
            knn = "" if accuracy is None else f"  kNN {accuracy:.3f}"
            log.info("pretrain epoch %d/%d  loss %.4f%s  %.0f img/s", epoch, total, loss, knn, rate)
            if epoch == 1 and total > 1:
                log.info("%s", pace(seconds, total))
            self._log({"train/loss": loss, "train/images_per_second": rate, "data/unreadable_images": bad}, epoch)
            if accuracy is not None:
                self._log({"online_knn/accuracy": accuracy}, epoch)
        if len(self.losses) > 1:
            metrics["images_per_second"] = self.steady_images / self.steady_seconds
        metrics["knn"] = list(self.knn_history)
        metrics["threads"] = torch.get_num_threads()
        if epoch % self.every == 0 or epoch == total or trainer.should_stop:
            _report_checkpoint(trainer, module, metrics)


def _sum_over_ranks(value: int) -> int:
    if not torch.distributed.is_initialized():
        return value
    total = torch.tensor([value])
    torch.distributed.all_reduce(total)
    return int(total.item())


def _report_checkpoint(trainer: pl.Trainer, module, metrics: dict) -> None:
    # save_checkpoint is collective (a barrier); only rank 0 writes and hands the folder to Ray.
    with tempfile.TemporaryDirectory() as folder:
        trainer.save_checkpoint(Path(folder, LIGHTNING_CKPT), weights_only=False)
        checkpoint = None
        if trainer.global_rank == 0:
            state = {k: v.detach().cpu().contiguous() for k, v in module.backbone.state_dict().items()}
            save_file(state, str(Path(folder, BACKBONE_FILE)))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _record_placement(rank: int, tracking: dict | None) -> None:
    """Rank 0 tags the pretraining run with the Ray nodes its worker group spans."""
    context = ray.get_runtime_context()  # host and IP to read, the node id's head to tell apart nodes of one host
    here = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {context.get_node_id()[:8]})"
    nodes = [here]
    if torch.distributed.is_initialized():
        nodes = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(nodes, here)
    if rank == 0 and tracking:
        from mlflow import MlflowClient

        client = MlflowClient(tracking["uri"])
        client.set_tag(tracking["run_id"], "labelcurve.worker_nodes", "; ".join(sorted(set(nodes))))
        client.set_tag(tracking["run_id"], "labelcurve.num_nodes", str(len(set(nodes))))


@contextlib.contextmanager
def _system_metrics(tracking: dict | None, context) -> Iterator[None]:
    """MLflow's CPU, memory, disk, network (and GPU) metrics on the pretraining run, sampled every
    5 s by the first worker of each node (``system/node<N>/...``); a resumed run continues its steps."""
    if not tracking or context.get_local_rank() != 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        tracking["run_id"],
        sampling_interval=5,
        resume_logging=True,
        node_id=f"node{context.get_node_rank()}",
        tracking_uri=tracking["uri"],
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _quiet_report_echo() -> None:
    """Ray Train 2.x logs every report with its metrics (the loss history) at INFO, under a
    logger named after its file; progress already has its own line per epoch."""
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _use_reserved_cpus() -> int:
    """Run torch on as many threads as this worker reserved CPUs (at least one), and return that.

    Ray sets a worker's ``OMP_NUM_THREADS`` from its reservation only where the environment left it
    unset; a value inherited from the driver's shell would otherwise decide, whatever the worker holds.
    """
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, math.floor(cpus))
    torch.set_num_threads(threads)
    return threads


def _train_worker(config: dict) -> None:
    log.setLevel(logging.INFO)
    _use_reserved_cpus()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no GPU/TPU banner per worker
    _quiet_report_echo()
    bound_http_retries()  # a worker on another node does not inherit the driver's environment
    p = SimpleNamespace(**config["pretrain"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _record_placement(rank, config.get("tracking"))
    batch = config["batch_size"]
    resume = ray.train.get_checkpoint()
    state = None
    if resume is not None:
        with resume.as_directory() as folder:
            state = torch.load(Path(folder, LIGHTNING_CKPT), map_location="cpu", weights_only=True)
    done = state["epoch"] + 1 if state else 0  # epochs trained before: the data goes on from there
    if config["input"] == "local":
        items, source, transform = ray.get(config["local"])
        batches = LocalBatches(
            items, source, transform, config["seed"], rank, world, batch, p.epochs, done, config["keep_decoded"]
        )
    else:  # the driver's stream starts at the epoch it found checkpointed; a restarted group may be further
        first = config["first_epoch"]
        steps = steps_per_epoch(config["n_images"], world, batch, max(1, p.epochs - first))
        batches = ShardBatches(ray.train.get_dataset_shard("train"), batch, steps, first)
        batches.epoch = max(done, first)
    pl.seed_everything(config["seed"], verbose=False)  # the same init and PL_GLOBAL_SEED on every rank
    model = build_method(
        p.method,
        build_backbone(p.backbone, config["channels"], config["image_size"], **config["backbone_options"]),
        chosen_options(p.method, p.options),
        lr=config["lr"],
        weight_decay=p.weight_decay,
        optimizer=p.optimizer,
        warmup_epochs=p.warmup_epochs,
        max_epochs=p.epochs,
        gather_distributed=p.gather_distributed,
    )
    torch.manual_seed(rank_seed(config["seed"], rank))  # masks and noise differ per rank, the same on a re-run
    if p.use_gpu and p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    knn = ray.get(config["knn"]) if config.get("knn") is not None else None
    report = _EpochReport(p.checkpoint_every, config.get("tracking"), knn, batches, config["max_bad"])
    trainer = pl.Trainer(
        max_epochs=p.epochs,
        accelerator="gpu" if p.use_gpu else "cpu",
        # one worker needs no DDP: its gradient all-reduce would only copy buckets
        **({"strategy": RayDDPStrategy(), "plugins": [RayLightningEnvironment()]} if world > 1 else {"devices": 1}),
        callbacks=[report],
        precision=("16-mixed" if p.use_gpu else "32-true") if p.precision == "auto" else p.precision,
        sync_batchnorm=p.sync_batchnorm and p.use_gpu and world > 1,  # torch: GPU only
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if world > 1:
        trainer = prepare_trainer(trainer)
    try:
        if resume is None:
            with _system_metrics(config.get("tracking"), context):
                trainer.fit(model, batches)
            return
        with resume.as_directory() as folder, _system_metrics(config.get("tracking"), context):
            if done >= p.epochs:  # finished before: hand the same checkpoint back
                checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
                ray.train.report({"epoch": p.epochs}, checkpoint=checkpoint)
                return
            trainer.fit(model, batches, ckpt_path=str(Path(folder, LIGHTNING_CKPT)), weights_only=True)
    finally:
        batches.close()  # a local rank's read threads


def epochs_checkpointed(storage: str, name: str) -> int:
    """Epochs an earlier invocation of run ``name`` trained and checkpointed (0 for a new run):
    Ray Train resumes the workers from that checkpoint, and the stream starts after those epochs."""
    try:
        result = ray.train.Result.from_path(f"{storage.rstrip('/')}/{name}")
    except (RuntimeError, OSError):  # no earlier run of that name
        return 0
    return int((result.metrics or {}).get("epoch", 0)) if result.checkpoint else 0


def knn_subset(data: StudyData, size: int, seed: int = 0) -> dict | None:
    """A stratified bank/query split of at most ``size`` labeled pool images, decoded and normalized."""
    labels, items = data.labels(POOL), np.array(data.items(POOL), dtype=object)
    index = np.arange(len(labels))
    try:
        if size < len(index):
            index, _ = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
        bank, queries = train_test_split(index, test_size=0.3, stratify=labels[index], random_state=seed)
    except ValueError:  # too few images per class for a stratified split: no online kNN
        return None

    def images(index: np.ndarray) -> torch.Tensor:
        return normalize(data.source.read_many(items[index].tolist())[0], data.mean, data.std)

    return {
        "bank": images(bank),
        "bank_labels": labels[bank],
        "queries": images(queries),
        "query_labels": labels[queries],
    }


def pace(first_epoch_s: float, epochs: int) -> str:
    """After the first epoch, how long all of them will take at its pace: a run of days says so
    before anyone waits for it (a rough figure: later epochs add checkpoints and the online kNN)."""
    total = first_epoch_s * epochs
    unit, size = next((u, s) for u, s in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)) if total >= s or u == "s")
    took = f"pretrain: epoch 1 took {first_epoch_s:.0f} s"
    return f"{took}; {epochs} epochs at this pace take about {total / size:.1f} {unit}"


def effective_batch_size(batch_size: int, num_workers: int, n_images: int) -> int:
    """Per-worker batch, shrunk when the pool is too small to fill one step on every worker."""
    return max(2, min(batch_size, n_images // num_workers))


def scaled_lr(lr: float, batch_size: int, num_workers: int) -> float:
    """``lr`` is set for a global batch of 256 (Goyal et al., 2017): scale it linearly to the
    batch every step really sees (the per-worker batch after :func:`effective_batch_size`)."""
    return lr * batch_size * num_workers / 256


def input_mode(settings: dict, n_images: int, image_bytes: int = 0, spare_cpus: float = 0.0) -> str:
    """Where views are made: Ray Data tasks (``stream``) or each worker for its own shard (``local``).

    ``auto`` streams to GPU workers (a GPU would wait for its own augmentations) and to CPU workers
    that leave at least one CPU each to Ray Data's tasks (``spare_cpus``: other nodes' or cores'
    CPUs the stream puts to work), unless the pool is small (at most ``LOCAL_MAX_IMAGES`` images
    whose decoded copy fits in ``LOCAL_MAX_BYTES``), where the stream's start costs more than it
    saves. CPU workers that take the cluster's CPUs make their own views: moving them through Ray's
    object store would only take CPU from training.
    """
    if settings["input"] != "auto":
        return settings["input"]
    if settings["use_gpu"]:
        return "stream"
    small = keeps_decoded(n_images, image_bytes)
    return "local" if small or spare_cpus < settings["num_workers"] else "stream"


def spare_cpus(settings: dict, cluster_cpus: float) -> float:
    """The CPUs of the cluster beyond one for each local worker: what Ray Data's tasks would have."""
    return cluster_cpus - (worker_resources(settings, "local") or {}).get("CPU", 1.0) * settings["num_workers"]


_INPUT_LINES = {
    "stream": "in Ray Data tasks, streamed to the workers (pretrain.input=stream)",
    ("local", True): "by each worker for its shard, keeping the decoded pool (pretrain.input=local)",
    ("local", False): "by each worker for its shard, reading the files again every epoch (pretrain.input=local)",
}


def keeps_decoded(n_images: int, image_bytes: int) -> bool:
    """Whether a local worker keeps the images it decoded (it sees the whole pool over a few epochs):
    only a small pool, of at most ``LOCAL_MAX_IMAGES`` whose decoded copy fits in ``LOCAL_MAX_BYTES``.
    A larger one is read again every epoch, so what a worker holds has a bound, whatever the pool."""
    return n_images <= LOCAL_MAX_IMAGES and n_images * image_bytes <= LOCAL_MAX_BYTES


def node_cpus() -> list[float]:
    """The CPUs of each live node of the Ray cluster."""
    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]]


def local_worker_cpus(num_workers: int, cpus_per_node: Sequence[float]) -> int:
    """Whole CPUs for each local CPU worker: the most that still places every worker on a node.

    A local worker decodes, augments and trains in its own process and nothing else runs beside
    pretraining, so it takes its share of the nodes' CPUs: Ray gives torch one thread per reserved
    CPU, and one worker on two cores holding one would leave a core idle. At least one (a cluster
    too small even for that is refused by :func:`check_resources`).
    """
    most = int(max(cpus_per_node, default=1))
    fits = (c for c in range(most, 0, -1) if sum(int(n // c) for n in cpus_per_node) >= num_workers)
    return next(fits, 1)


def worker_resources(
    settings: dict, mode: str = "stream", cpus_per_node: Sequence[float] = ()
) -> dict[str, float] | None:
    """A streaming CPU worker asks for ``augment_cpus`` of a CPU, leaving the rest of its share to
    the Ray Data tasks that decode and augment its input (on a GPU node they use the node's other
    CPUs); a local one makes its views itself and takes its share of ``cpus_per_node``
    (:func:`local_worker_cpus`; one CPU where the nodes are not given)."""
    if settings["resources_per_worker"] or settings["use_gpu"]:
        return settings["resources_per_worker"]
    if mode == "stream":
        return {"CPU": settings["augment_cpus"]}
    return {"CPU": local_worker_cpus(settings["num_workers"], cpus_per_node)}


def check_resources(settings: dict, mode: str = "stream", cpus_per_node: Sequence[float] = ()) -> None:
    """Refuse, before Ray Train waits for them forever, workers that the cluster cannot hold."""
    per_worker = dict(worker_resources(settings, mode, cpus_per_node) or {"CPU": 1})
    if settings["use_gpu"]:
        per_worker.setdefault("GPU", 1)
    total = ray.cluster_resources()
    for resource, amount in per_worker.items():
        need = amount * settings["num_workers"]
        if need > total.get(resource, 0):
            fix = "set pretrain.use_gpu=false or add GPU nodes" if resource == "GPU" else "lower pretrain.num_workers"
            raise ResourceError(
                f"pretraining asks for {need:g} {resource} ({settings['num_workers']} workers x {amount:g}) and the "
                f"Ray cluster has {total.get(resource, 0):g}: {fix} or pretrain.resources_per_worker"
            )


def pretrain(
    settings: dict,
    data: StudyData,
    *,
    name: str,
    seed: int = 0,
    tracking: dict | None = None,
    max_bad_fraction: float = 0.01,
    say: Callable[[str], object] = log.info,
) -> PretrainResult:
    """Pretrain a backbone on ``data.pretraining_items`` with ``settings['num_workers']`` Ray workers.

    ``settings`` is the ``pretrain`` section as a plain dict. The learning rate is scaled
    linearly with the global batch (``lr * batch_size * num_workers / 256``). The views come
    from Ray Data tasks or from each worker (:func:`input_mode`), and ``say`` tells which; when
    more than ``max_bad_fraction`` of them fail to decode, training stops and
    :class:`TooManyBadImages` names the first bad files.
    """
    p = SimpleNamespace(**settings)
    items = data.pretraining_items
    image_bytes = data.channels * data.image_size**2
    mode = input_mode(settings, len(items), image_bytes, spare_cpus(settings, ray.cluster_resources().get("CPU", 0.0)))
    keep = keeps_decoded(len(items), image_bytes)
    nodes = node_cpus()
    resources = worker_resources(settings, mode, nodes)
    cpus = (resources or {}).get("CPU", 1.0)
    where = _INPUT_LINES[mode] if mode == "stream" else _INPUT_LINES[mode, keep]
    workers = f"{p.num_workers} worker{'s' if p.num_workers > 1 else ''} x {cpus:g} CPU{'s' if cpus != 1 else ''}"
    say(f"pretraining: views made {where}; {workers}")
    check_resources(settings, mode, nodes)
    batch = effective_batch_size(p.batch_size, p.num_workers, len(items))
    knn = knn_subset(data, p.online_knn, seed) if p.online_knn else None
    views = ViewSettings.from_config(p, data.image_size, data.mean, data.std)
    transform = METHODS[p.method].transform(views, chosen_options(p.method, p.options))
    datasets = {}
    storage = p.storage_path if "://" in p.storage_path else str(Path(p.storage_path).resolve())
    first = epochs_checkpointed(storage, name) if mode == "stream" else 0
    if mode == "stream":
        datasets["train"] = pretraining_dataset(items, data.source, transform, seed, p.epochs, p.augment_cpus, first)
        training_cpus = cpus * p.num_workers
        warm_read_workers(data.source, transform, p.augment_cpus, training_cpus)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "pretrain": settings,
            "n_images": len(items),
            "channels": data.channels,
            "image_size": data.image_size,
            "seed": seed,
            "batch_size": batch,
            "lr": scaled_lr(p.lr, batch, p.num_workers),
            "tracking": tracking,
            "backbone_options": backbone_options(p.backbone, data.image_size, p.cifar_stem, p.patch_size),
            "knn": ray.put(knn) if knn else None,
            "max_bad": max_bad_fraction,
            "input": mode,
            "first_epoch": first,
            "local": ray.put((items, data.source, transform)) if mode == "local" else None,
            "keep_decoded": keep,
        },
        datasets=datasets,
        scaling_config=ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.perf_counter()
    handler = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    finally:  # Ray Train installs its own SIGINT handler and leaves it: one Ctrl+C must stop the study
        signal.signal(signal.SIGINT, handler)
    metrics = result.metrics or {}
    if metrics.get("bad_items"):
        raise TooManyBadImages(
            f"{metrics['bad_images']} pretraining images failed to decode, more than data.max_bad_fraction="
            f"{max_bad_fraction} allows (first: {', '.join(metrics['bad_items'])}): fix or remove them"
        )
    with result.checkpoint.as_directory() as folder:
        state = load_file(str(Path(folder, BACKBONE_FILE)))
    return PretrainResult(
        state,
        result.checkpoint.path,
        time.perf_counter() - started,
        list(metrics.get("losses", [])),
        list(metrics.get("knn", [])),
        metrics.get("images_per_second"),
        int(metrics.get("bad_images", 0)),
        list(metrics.get("rates", [])),
        metrics.get("threads"),
    )
