"""SimCLR: contrast two views of each image against every other image in the global batch."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from pretrain.method_options import SimCLROptions
from pretrain.methods.base import SSLMethod


class SimCLR(SSLMethod):
    """SimCLR (Chen et al., ICML 2020, https://arxiv.org/abs/2002.05709) from lightly's parts.

    Negatives are gathered across Ray Train workers (``gather_distributed``), so the loss sees
    the global batch, as in the paper. Example::

        method = SimCLR(resnet(18, cifar_stem=True), SimCLROptions(temperature=0.5))
        loss = method.loss([view_a, view_b])
    """

    Options = SimCLROptions

    def __init__(self, backbone, options: SimCLROptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        dim = backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(dim, dim, options.projection_dim)
        self.criterion = NTXentLoss(temperature=options.temperature, gather_distributed=self.gather_distributed)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views)
        return self.criterion(z0, z1)
