"""VICReg: invariance between views, variance kept above a floor, covariance decorrelated."""

from __future__ import annotations

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from pretrain.methods.base import SSLMethod


class VICReg(SSLMethod):
    """VICReg (Bardes, Ponce and LeCun, ICLR 2022, https://arxiv.org/abs/2105.04906).

    The expander is the paper's three-layer MLP. Example::

        method = VICReg(resnet(18, cifar_stem=True), projection_dim=2048)
        loss = method.loss([view_a, view_b])
    """

    def __init__(
        self,
        backbone,
        *,
        hidden_dim: int = 2048,
        projection_dim: int = 2048,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        **base,
    ) -> None:
        super().__init__(backbone, **base)
        self.projection_head = BarlowTwinsProjectionHead(backbone.feature_dim, hidden_dim, projection_dim)
        self.criterion = VICRegLoss(
            lambda_param=lambda_param, mu_param=mu_param, nu_param=nu_param, gather_distributed=self.gather_distributed
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views)
        return self.criterion(z0, z1)
