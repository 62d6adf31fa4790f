"""Distributed pretraining: a Lightning SSL module trained by Ray Train's ``TorchTrainer``.

The driver calls :func:`pretrain`; each Ray Train worker runs :func:`_train_worker`. Checkpoints
go to ``storage_path`` (a shared path or ``s3://`` on a multi-node cluster): a re-run with the same
name, or a worker group restarted after a failure, resumes from the latest one. Only plain data
crosses into the workers: the pretraining settings as a dict, the images as an object ref, and a
tracking handle ``{"uri", "run_id"}`` so that rank 0 logs into the one run the driver created.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from pretrain.backbones import build_backbone
from pretrain.data import StudyData
from pretrain.methods import METHODS
from pretrain.views import MultiViewDataset, simclr_transform

log = logging.getLogger("labelcurve.pretrain")

LIGHTNING_CKPT = "checkpoint.ckpt"
BACKBONE_FILE = "backbone.safetensors"


@dataclass(frozen=True)
class PretrainResult:
    """The pretrained backbone weights and where Ray Train kept the checkpoint."""

    backbone_state: dict[str, torch.Tensor]
    checkpoint_path: str
    seconds: float


class _EpochReport(pl.Callback):
    """Prints progress, logs the epoch loss to MLflow (rank 0) and checkpoints to Ray Train."""

    def __init__(self, every: int, tracking: dict | None, n_images: int) -> None:
        self.every, self.tracking, self.n_images = every, tracking, n_images
        self.client = None
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        loss = float(trainer.callback_metrics["train/loss"])
        if trainer.global_rank == 0:
            rate = self.n_images / (time.perf_counter() - self.started)
            log.info("pretrain epoch %d/%d  loss %.4f  %.0f img/s", epoch, total, loss, rate)
            if self.tracking:
                if self.client is None:
                    from mlflow import MlflowClient

                    self.client = MlflowClient(self.tracking["uri"])
                self.client.log_metric(self.tracking["run_id"], "train/loss", loss, step=epoch)
        if epoch % self.every == 0 or epoch == total:
            _report_checkpoint(trainer, module, {"epoch": epoch, "loss": loss})


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


def _train_worker(config: dict) -> None:
    log.setLevel(logging.INFO)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no GPU/TPU banner per worker
    p = SimpleNamespace(**config["pretrain"])
    rank = ray.train.get_context().get_world_rank()
    _record_placement(rank, config.get("tracking"))
    pl.seed_everything(config["seed"] + rank, verbose=False)
    images = ray.get(config["images"])
    transform = simclr_transform(p, images.shape[-1], config["mean"], config["std"])
    loader = DataLoader(
        MultiViewDataset(images, transform), batch_size=config["batch_size"], shuffle=True, drop_last=True
    )
    torch.manual_seed(config["seed"])  # the same init on every rank
    model = METHODS[p.method](
        build_backbone(p.backbone, images.shape[1]),
        temperature=p.temperature,
        projection_dim=p.projection_dim,
        gather_distributed=p.gather_distributed,
        lr=config["lr"],
        weight_decay=p.weight_decay,
        optimizer=p.optimizer,
        warmup_epochs=p.warmup_epochs,
        max_epochs=p.epochs,
    )
    world = ray.train.get_context().get_world_size()
    trainer = pl.Trainer(
        max_epochs=p.epochs,
        accelerator="gpu" if p.use_gpu else "cpu",
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[_EpochReport(p.checkpoint_every, config.get("tracking"), len(images))],
        precision=("16-mixed" if p.use_gpu else "32-true") if p.precision == "auto" else p.precision,
        sync_batchnorm=p.sync_batchnorm and p.use_gpu and world > 1,  # torch: GPU only
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
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
    return PretrainResult(state, result.checkpoint.path, time.perf_counter() - started)
