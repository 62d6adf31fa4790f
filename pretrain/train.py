"""Distributed pretraining: a Lightning SSL module trained by Ray Train's ``TorchTrainer``.

The driver calls :func:`pretrain`; each Ray Train worker runs :func:`_train_worker`. Checkpoints
go to ``storage_path`` (a shared path or ``s3://`` on a multi-node cluster): a re-run with the same
name, or a worker group restarted after a failure, resumes from the latest one. Only plain data
crosses into the workers: the pretraining settings as a dict, the images as an object ref, and a
tracking handle ``{"uri", "run_id"}`` so that rank 0 logs into the one run the driver created.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
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
from torch.utils.data import DataLoader

from pretrain.backbones import backbone_options, build_backbone, embed
from pretrain.data import StudyData
from pretrain.knn import knn_accuracy
from pretrain.methods import METHODS, build_method
from pretrain.views import MultiViewDataset, ViewSettings, normalize

log = logging.getLogger("labelcurve.pretrain")

LIGHTNING_CKPT = "checkpoint.ckpt"
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


class _EpochReport(pl.Callback):
    """Per epoch: progress line, MLflow metrics (rank 0), online kNN, checkpoint to Ray Train.

    The online kNN accuracy (Wu et al., 2018) embeds a small labeled subset of the pool with the
    current backbone, on rank 0 only, so that users watch representation quality while the run
    goes; epoch 0 is the random init. Nothing from the test split is used.
    """

    def __init__(self, every: int, tracking: dict | None, n_images: int, knn: dict | None) -> None:
        self.every, self.tracking, self.n_images, self.knn = every, tracking, n_images, knn
        self.client = None
        self.started = time.perf_counter()
        self.losses: list[float] = []
        self.knn_history: list[float] = []
        self.steady_seconds = 0.0  # epochs after the first: no warm-up, worker start or compilation

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if not self.tracking:
            return
        if self.client is None:
            from mlflow import MlflowClient

            self.client = MlflowClient(self.tracking["uri"])
        for key, value in metrics.items():
            self.client.log_metric(self.tracking["run_id"], key, value, step=step)

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
            self._log({"knn/accuracy": accuracy}, 0)

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        loss = float(trainer.callback_metrics["train/loss"])
        seconds = time.perf_counter() - self.started
        self.losses.append(loss)
        if len(self.losses) > 1:
            self.steady_seconds += seconds
        metrics = {"epoch": epoch, "loss": loss, "losses": list(self.losses)}
        if trainer.global_rank == 0:
            rate = self.n_images / seconds
            accuracy = self._knn(module)
            knn = "" if accuracy is None else f"  kNN {accuracy:.3f}"
            log.info("pretrain epoch %d/%d  loss %.4f%s  %.0f img/s", epoch, total, loss, knn, rate)
            self._log({"train/loss": loss, "train/images_per_second": rate}, epoch)
            if accuracy is not None:
                self._log({"knn/accuracy": accuracy}, epoch)
        if len(self.losses) > 1:
            metrics["images_per_second"] = self.n_images * (len(self.losses) - 1) / self.steady_seconds
        metrics["knn"] = list(self.knn_history)
        if epoch % self.every == 0 or epoch == total:
            _report_checkpoint(trainer, module, metrics)


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
    nodes = [ray.get_runtime_context().get_node_id()]
    if torch.distributed.is_initialized():
        nodes = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0 and tracking:
        from mlflow import MlflowClient

        client = MlflowClient(tracking["uri"])
        client.set_tag(tracking["run_id"], "labelcurve.worker_nodes", ",".join(sorted(set(nodes))))
        client.log_metric(tracking["run_id"], "num_nodes", len(set(nodes)))


def _loader_workers(setting: int | None) -> int:
    """DataLoader processes: as configured, else the CPUs Ray gave this worker minus one."""
    if setting is not None:
        return setting
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(int(cpus) - 1, 0)


def _quiet_report_echo() -> None:
    """Ray Train 2.x logs every report with its metrics (the loss history) at INFO, under a
    logger named after its file; progress already has its own line per epoch."""
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _train_worker(config: dict) -> None:
    log.setLevel(logging.INFO)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no GPU/TPU banner per worker
    _quiet_report_echo()
    p = SimpleNamespace(**config["pretrain"])
    rank = ray.train.get_context().get_world_rank()
    _record_placement(rank, config.get("tracking"))
    pl.seed_everything(config["seed"] + rank, verbose=False)
    images = ray.get(config["images"])
    size = images.shape[-1]
    views = ViewSettings.from_config(p, size, config["mean"], config["std"])
    workers = _loader_workers(p.loader_workers)
    loader = DataLoader(
        MultiViewDataset(images, METHODS[p.method].transform(views, **p.options)),
        batch_size=config["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=p.use_gpu,
    )
    torch.manual_seed(config["seed"])  # the same init on every rank
    model = build_method(
        p.method,
        build_backbone(p.backbone, images.shape[1], size, **config["backbone_options"]),
        p.options,
        lr=config["lr"],
        weight_decay=p.weight_decay,
        optimizer=p.optimizer,
        warmup_epochs=p.warmup_epochs,
        max_epochs=p.epochs,
        gather_distributed=p.gather_distributed,
    )
    if p.use_gpu and p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    knn = ray.get(config["knn"]) if config.get("knn") is not None else None
    world = ray.train.get_context().get_world_size()
    trainer = pl.Trainer(
        max_epochs=p.epochs,
        accelerator="gpu" if p.use_gpu else "cpu",
        # one worker needs no DDP: its gradient all-reduce would only copy buckets
        **({"strategy": RayDDPStrategy(), "plugins": [RayLightningEnvironment()]} if world > 1 else {"devices": 1}),
        callbacks=[_EpochReport(p.checkpoint_every, config.get("tracking"), len(images), knn)],
        precision=("16-mixed" if p.use_gpu else "32-true") if p.precision == "auto" else p.precision,
        sync_batchnorm=p.sync_batchnorm and p.use_gpu and world > 1,  # torch: GPU only
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if world > 1:
        trainer = prepare_trainer(trainer)
    resume = ray.train.get_checkpoint()
    if resume is None:
        trainer.fit(model, loader)
        return
    with resume.as_directory() as folder:
        state = torch.load(Path(folder, LIGHTNING_CKPT), map_location="cpu", weights_only=True)
        if state["epoch"] + 1 >= p.epochs:  # finished before: hand the same checkpoint back
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report({"epoch": p.epochs}, checkpoint=checkpoint)
            return
        trainer.fit(model, loader, ckpt_path=str(Path(folder, LIGHTNING_CKPT)), weights_only=True)


def knn_subset(data: StudyData, size: int, seed: int = 0) -> dict | None:
    """A stratified bank/query split of at most ``size`` labeled pool images, normalized."""
    labels = data.pool.labels.numpy()
    index = np.arange(len(labels))
    try:
        if size < len(index):
            index, _ = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
        bank, queries = train_test_split(index, test_size=0.3, stratify=labels[index], random_state=seed)
    except ValueError:  # too few images per class for a stratified split: no online kNN
        return None
    return {
        "bank": normalize(data.pool.images[bank], data.mean, data.std),
        "bank_labels": labels[bank],
        "queries": normalize(data.pool.images[queries], data.mean, data.std),
        "query_labels": labels[queries],
    }


def effective_batch_size(batch_size: int, num_workers: int, n_images: int) -> int:
    """Per-worker batch, shrunk when the pool is too small to fill one step on every worker."""
    return max(2, min(batch_size, n_images // num_workers))


def pretrain(
    settings: dict,
    data: StudyData,
    *,
    name: str,
    seed: int = 0,
    tracking: dict | None = None,
) -> PretrainResult:
    """Pretrain a backbone on ``data.unlabeled`` with ``settings['num_workers']`` Ray workers.

    ``settings`` is the ``pretrain`` section as a plain dict. The learning rate is scaled
    linearly with the global batch (``lr * batch_size * num_workers / 256``).
    """
    p = SimpleNamespace(**settings)
    batch = effective_batch_size(p.batch_size, p.num_workers, len(data.unlabeled))
    knn = knn_subset(data, p.online_knn, seed) if p.online_knn else None
    storage = p.storage_path if "://" in p.storage_path else str(Path(p.storage_path).resolve())
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "pretrain": settings,
            "images": ray.put(data.unlabeled.images),
            "mean": data.mean,
            "std": data.std,
            "seed": seed,
            "batch_size": batch,
            "lr": p.lr * batch * p.num_workers / 256,
            "tracking": tracking,
            "backbone_options": backbone_options(p.backbone, data.image_size, p.cifar_stem, p.patch_size),
            "knn": ray.put(knn) if knn else None,
        },
        scaling_config=ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=p.resources_per_worker
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = load_file(str(Path(folder, BACKBONE_FILE)))
    metrics = result.metrics or {}
    return PretrainResult(
        state,
        result.checkpoint.path,
        time.perf_counter() - started,
        list(metrics.get("losses", [])),
        list(metrics.get("knn", [])),
        metrics.get("images_per_second"),
    )
