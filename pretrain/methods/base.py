"""The shared base of every SSL method: backbone, views, optimizer, schedules, EMA teachers.

A method subclasses :class:`SSLMethod` and only says what is different: its heads, its
``loss(views)`` and, where it is not two SimCLR views, its ``transform``. Everything else
(optimizers incl. LARS, warmup + cosine schedule, the momentum schedule of teacher networks,
logging) lives here once. A method's keyword-only ``__init__`` arguments are its config
options (``pretrain.options``), typed and checked by :func:`pretrain.methods.options_schema`.
"""

from __future__ import annotations

import copy
import math

import pytorch_lightning as pl
import torch
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from pretrain.views import ViewSettings, simclr_views


class SSLMethod(pl.LightningModule):
    """Base LightningModule for self-supervised pretraining on batches of views."""

    #: backbone families the method works with (None: any); MAE needs a ViT
    families: tuple[str, ...] | None = None

    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        warmup_epochs: int = 0,
        max_epochs: int = 1,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        self.gather_distributed = gather_distributed
        self.ema: tuple[float, float] | None = None  # teacher methods: (start, end) of the EMA momentum
        self._teachers: list[tuple[nn.Module, nn.Module]] = []

    @classmethod
    def transform(cls, views: ViewSettings, **options):
        """The lightly transform that makes the views of one image; two SimCLR views by default."""
        return simclr_views(views)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def follow(self, student: nn.Module, teacher: nn.Module | None = None) -> nn.Module:
        """An EMA teacher of ``student`` (a frozen copy unless given), updated every step."""
        teacher = copy.deepcopy(student) if teacher is None else teacher
        deactivate_requires_grad(teacher)
        self._teachers.append((student, teacher))
        return teacher

    def momentum(self) -> float:
        """The teacher's EMA momentum now: cosine from ``ema[0]`` to ``ema[1]`` (Grill et al., 2020)."""
        start, end = self.ema or (0.0, 0.0)
        return cosine_schedule(self.global_step, max(self.trainer.estimated_stepping_batches, 1), start, end)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.ema:
            m = self.momentum()
            for student, teacher in self._teachers:
                update_momentum(student, teacher, m)
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))
        return loss

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "lars":
            # You et al., 2017: no weight decay and no layer-wise scaling for biases and norms
            decay, no_decay = get_weight_decay_parameters([self])
            groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
            opt = LARS(groups, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "sgd":
            opt = torch.optim.SGD(trainable, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay)
        steps = self.trainer.estimated_stepping_batches
        warmup = steps * self.warmup_epochs / max(self.max_epochs, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return [opt], [{"scheduler": schedule, "interval": "step"}]
