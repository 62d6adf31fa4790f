"""MoCo v2: contrast queries against keys from a momentum encoder and a memory bank of old keys."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead

from pretrain.method_options import MoCoV2Options
from pretrain.methods.base import SSLMethod


class MoCoV2(SSLMethod):
    """MoCo v2 (Chen et al., 2020, https://arxiv.org/abs/2003.04297; He et al., CVPR 2020).

    The memory bank holds ``memory_bank_size`` keys, so negatives do not depend on the batch
    size; with ``gather_distributed`` every worker's keys enter the bank. The loss is symmetrized
    over the two views, as in lightly's CIFAR-10 benchmark. Example::

        method = MoCoV2(resnet(18, cifar_stem=True), MoCoV2Options(memory_bank_size=4096))
        loss = method.loss([view_a, view_b])
    """

    Options = MoCoV2Options

    def __init__(self, backbone, options: MoCoV2Options | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.ema = (options.momentum, 1.0)
        dim = backbone.feature_dim
        self.projection_head = MoCoProjectionHead(dim, dim, options.projection_dim)
        self.backbone_momentum = self.follow(self.backbone)
        self.projection_head_momentum = self.follow(self.projection_head)
        self.criterion = NTXentLoss(
            temperature=options.temperature,
            memory_bank_size=(options.memory_bank_size, options.projection_dim),
            gather_distributed=self.gather_distributed,
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        queries = [self.projection_head(self.backbone(v)) for v in views]
        with torch.no_grad():
            keys = [self.projection_head_momentum(self.backbone_momentum(v)) for v in views]
        return 0.5 * (self.criterion(queries[0], keys[1]) + self.criterion(queries[1], keys[0]))
