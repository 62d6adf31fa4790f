"""The shared base of every SSL method: backbone, optimizer and schedule.

A method subclasses :class:`SSLMethod` and only says what is different: its heads and
``loss(views)``. Everything else (optimizer, warmup + cosine schedule, logging) lives here once.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn


class SSLMethod(pl.LightningModule):
    """Base LightningModule for self-supervised pretraining on batches of views."""

    def __init__(
        self,
        backbone: nn.Module,
        lr: float,
        weight_decay: float,
        optimizer: str = "adamw",
        warmup_epochs: int = 0,
        max_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))
        return loss

    def configure_optimizers(self):
        params = self.parameters()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        steps = self.trainer.estimated_stepping_batches
        warmup = steps * self.warmup_epochs / max(self.max_epochs, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return [opt], [{"scheduler": schedule, "interval": "step"}]
