"""labelcurve's pretraining against a bare lightly + Lightning loop, side by side in one run.

    .venv/bin/python benchmarks/vs_lightly.py [--backbone resnet18] [--images 2048] [--epochs 4] [--gpu]
        [--no-dashboard]

Both train SimCLR on the same images (the CIFAR-10 JPEG copy in ../shared/data, else digits),
with the same backbone, projection head, loss, augmentations, optimizer, batch size, number of
steps, threads and DataLoader processes. The bare loop is lightly's own example: a
LightningModule, a Dataset with ``SimCLRTransform`` and ``pl.Trainer``. labelcurve runs
:func:`pretrain.train.pretrain`: a Ray Train worker group of one worker with DDP, checkpoints
and MLflow-free progress reporting, with and without the online kNN. Throughput is images trained
per second over the epochs after the first (no start-up, no warm-up), counted in full batches on
both sides: the bare DataLoader drops each epoch's last incomplete batch (896 of 1,020 images at
batch 128), labelcurve spreads a run's full batches over its epochs. Wall time includes start-up.
The threads column is what torch ran on: ``--cpus`` on the bare side, what the Ray Train worker
reserved on labelcurve's.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import ray
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch.utils.data import DataLoader, Dataset

from cluster.config import DataConfig, PretrainConfig
from cluster.ray_runtime import connect
from pretrain.backbones import build_backbone
from pretrain.data import load_data, plan_data
from pretrain.train import pretrain
from pretrain.views import to_pil

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
LR, MOMENTUM, WEIGHT_DECAY, TEMPERATURE = 0.06, 0.9, 5e-4, 0.5


class BareSimCLR(pl.LightningModule):
    """SimCLR as in lightly's README example."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(backbone.feature_dim, backbone.feature_dim, 128)
        self.criterion = NTXentLoss(temperature=TEMPERATURE)

    def training_step(self, batch, batch_index):
        z0, z1 = (self.projection_head(self.backbone(x)) for x in batch)
        return self.criterion(z0, z1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


class MultiViewDataset(Dataset):
    """Views of in-memory uint8 images, as lightly's README example feeds a DataLoader."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(to_pil(self.images[index]))


class EpochClock(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def load_images(count: int):
    if SHARED.is_file():
        folder = Path(tempfile.mkdtemp(prefix="vs-lightly-"))
        with tarfile.open(SHARED) as archive:
            archive.extractall(folder, filter="data")
        per_class = count // 10
        config = DataConfig(name="folder", path=str(folder / "cifar10"), max_per_class=per_class, max_test_per_class=10)
        return load_data(plan_data(config)), "CIFAR-10 (shared JPEG copy)"
    return load_data(plan_data(DataConfig(test_fraction=0.1))), "sklearn digits"


def bare_run(data, args, transform, precision: str) -> tuple[float, int, float]:
    torch.set_num_threads(args.cpus)
    torch.manual_seed(0)
    model = BareSimCLR(build_backbone(args.backbone, data.channels, data.image_size))
    images = data.source.read_many(data.pretraining_items)[0]  # the baseline holds the pool in memory
    loader = DataLoader(
        MultiViewDataset(images, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.loader_workers,
        persistent_workers=args.loader_workers > 0,
        pin_memory=args.gpu,
    )
    clock = EpochClock()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="gpu" if args.gpu else "cpu",
        devices=1,
        precision=precision,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(model, loader)
    wall = time.perf_counter() - started
    trained = len(loader) * args.batch_size  # images per epoch: drop_last leaves out the rest of the pool
    return trained * (args.epochs - 1) / sum(clock.seconds[1:]), torch.get_num_threads(), wall


def labelcurve_run(data, args, storage: str, online_knn: int) -> tuple[float, int, float]:
    settings = PretrainConfig(
        method="simclr",
        options={"simclr": {"temperature": TEMPERATURE, "projection_dim": 128}},
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="sgd",
        lr=LR * 256 / args.batch_size,  # labelcurve's lr is per 256 images, scaled to the batch
        weight_decay=WEIGHT_DECAY,
        warmup_epochs=0,
        min_scale=0.08,
        rotation_degrees=0,
        horizontal_flip=0.5,
        color_jitter=0.8,
        color_jitter_strength=0.5,
        num_workers=1,
        use_gpu=args.gpu,
        resources_per_worker={"CPU": args.cpus, **({"GPU": 1} if args.gpu else {})} if args.gpu else None,
        augment_cpus=args.cpus / 2,
        online_knn=online_knn,
        checkpoint_every=args.epochs,
        storage_path=storage,
    )
    started = time.perf_counter()
    result = pretrain(settings.model_dump(), data, name=f"bench-knn{online_knn}", seed=0)
    return result.images_per_second, result.threads, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="threads of both loops")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument(
        "--no-dashboard",
        action="store_true",
        help="start Ray without its dashboard (it competes for CPU on small machines)",
    )
    args = parser.parse_args()

    data, source = load_images(args.images)
    precision = "16-mixed" if args.gpu else "32-true"
    mean, std = list(data.mean), list(data.std)
    transform = SimCLRTransform(
        input_size=data.image_size,
        min_scale=0.08,
        cj_prob=0.8,
        cj_strength=0.5,
        gaussian_blur=0.0,
        normalize={"mean": mean, "std": std},
    )
    print(
        f"SimCLR on {len(data.pretraining_items)} {source} images at {data.image_size} px, {args.backbone}, "
        f"batch {args.batch_size}, {args.epochs} epochs, {args.cpus} threads, "
        f"{args.loader_workers} loader workers, {'GPU ' + precision if args.gpu else 'CPU'}"
    )
    if args.no_dashboard:
        ray.init(address="local", num_cpus=args.cpus, num_gpus=int(args.gpu), include_dashboard=False)
    else:
        connect(None)  # Ray in-process, started as `labelcurve run` starts it
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        rows.append(("bare lightly + Lightning", *bare_run(data, args, transform, precision)))
        rows.append(("labelcurve pretrain", *labelcurve_run(data, args, storage, online_knn=0)))
        rows.append(("labelcurve pretrain + online kNN", *labelcurve_run(data, args, storage, online_knn=500)))
    ray.shutdown()
    base = rows[0][1]
    print(f"\n| run | torch threads | img/s (epochs 2-{args.epochs}) | ratio | wall (s) |\n|---|---|---|---|---|")
    for name, rate, threads, wall in rows:
        print(f"| {name} | {threads} | {rate:.1f} | {rate / base:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
