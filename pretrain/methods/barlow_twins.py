"""Barlow Twins: make the cross-correlation of two views' embeddings the identity matrix."""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from pretrain.method_options import BarlowTwinsOptions
from pretrain.methods.base import SSLMethod


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., ICML 2021, https://arxiv.org/abs/2103.03230).

    With ``gather_distributed`` the cross-correlation is computed over the global batch.
    Example::

        method = BarlowTwins(resnet(18, cifar_stem=True), BarlowTwinsOptions(projection_dim=2048))
        loss = method.loss([view_a, view_b])
    """

    Options = BarlowTwinsOptions

    def __init__(self, backbone, options: BarlowTwinsOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.projection_head = BarlowTwinsProjectionHead(
            backbone.feature_dim, options.hidden_dim, options.projection_dim
        )
        self.criterion = BarlowTwinsLoss(lambda_param=options.lambda_param, gather_distributed=self.gather_distributed)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views)
        return self.criterion(z0, z1)
