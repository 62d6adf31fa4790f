"""Barlow Twins: make the cross-correlation of two views' embeddings the identity matrix."""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from pretrain.methods.base import SSLMethod


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., ICML 2021, https://arxiv.org/abs/2103.03230).

    With ``gather_distributed`` the cross-correlation is computed over the global batch.
    Example::

        method = BarlowTwins(resnet(18, cifar_stem=True), projection_dim=2048)
        loss = method.loss([view_a, view_b])
    """

    def __init__(
        self, backbone, *, hidden_dim: int = 2048, projection_dim: int = 2048, lambda_param: float = 5e-3, **base
    ) -> None:
        super().__init__(backbone, **base)
        self.projection_head = BarlowTwinsProjectionHead(backbone.feature_dim, hidden_dim, projection_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=self.gather_distributed)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views)
        return self.criterion(z0, z1)
