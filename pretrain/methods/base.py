"""The shared base of every SSL method: backbone, views, optimizer, schedules, EMA teachers.

A method subclasses :class:`SSLMethod` and only says what is different: its heads, its
``loss(views)`` and, where it is not two SimCLR views, its ``transform``. Everything else
(optimizers incl. LARS, warmup + cosine schedule, the momentum schedule of teacher networks,
logging) lives here once. A method's options (``pretrain.options.<method>``) are a typed model
in :mod:`pretrain.method_options`, which the config checks without importing torch.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import pytorch_lightning as pl
import torch
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler, cosine_schedule
from torch import nn

from pretrain.method_options import MethodOptions
from pretrain.views import ViewSettings, simclr_views


class SSLMethod(pl.LightningModule):
    """Base LightningModule for self-supervised pretraining on batches of views."""

    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(
        self,
        backbone: nn.Module,
        options: MethodOptions | None = None,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        warmup_epochs: int = 0,
        max_epochs: int = 1,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options if options is not None else self.Options()
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        self.gather_distributed = gather_distributed
        self.ema: tuple[float, float] | None = None  # teacher methods: (start, end) of the EMA momentum
        self._teachers: list[tuple[nn.Module, nn.Module]] = []

    @classmethod
    def transform(cls, views: ViewSettings, options: MethodOptions | None = None):
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
        optimizer, schedule = self.optimizer_and_schedule(int(self.trainer.estimated_stepping_batches))
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    def optimizer_and_schedule(self, total_steps: int):
        """The optimizer over the trainable parameters (never a frozen teacher's), without weight
        decay on biases, norm layers and ViT tokens, and lightly's linear warm-up + cosine decay per
        step, warm-up rounded to whole steps (a fractional one would overshoot the peak)."""
        groups = parameter_groups(self, self.weight_decay)
        if self.optimizer_name == "lars":
            # You et al., 2017; lightly's LARS skips the trust ratio where a group has no decay
            optimizer = LARS(groups, lr=self.lr, momentum=0.9)
        elif self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9)
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.lr)
        total_steps = max(total_steps, 1)
        warmup = min(round(total_steps * self.warmup_epochs / max(self.max_epochs, 1)), total_steps)
        return optimizer, CosineWarmupScheduler(optimizer, warmup_epochs=warmup, max_epochs=total_steps)


#: parameters that no reference recipe decays: ViT position embeddings and tokens (as timm's
#: ``no_weight_decay``), beside the biases and norm layers that lightly leaves out
NO_DECAY_NAMES = ("pos_embedding", "class_token", "mask_token")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters of ``module`` in a decayed and an undecayed group. Example::

    groups = parameter_groups(method, 1e-4)
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    """
    _, no_decay = get_weight_decay_parameters([module])
    tokens = {id(p) for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] in NO_DECAY_NAMES}
    no_decay_ids = {id(p) for p in no_decay} | tokens
    trainable = [p for p in module.parameters() if p.requires_grad]  # unique, in registration order
    return [
        {"params": [p for p in trainable if id(p) not in no_decay_ids], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) in no_decay_ids], "weight_decay": 0.0},
    ]
