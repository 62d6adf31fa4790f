"""VICReg: invariance between views, variance kept above a floor, covariance decorrelated."""

from __future__ import annotations

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from pretrain.method_options import VICRegOptions
from pretrain.methods.base import SSLMethod


class VICReg(SSLMethod):
    """VICReg (Bardes, Ponce and LeCun, ICLR 2022, https://arxiv.org/abs/2105.04906).

    The expander is the paper's three-layer MLP. Example::

        method = VICReg(resnet(18, cifar_stem=True), VICRegOptions(projection_dim=2048))
        loss = method.loss([view_a, view_b])
    """

    Options = VICRegOptions

    def __init__(self, backbone, options: VICRegOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.projection_head = BarlowTwinsProjectionHead(
            backbone.feature_dim, options.hidden_dim, options.projection_dim
        )
        self.criterion = VICRegLoss(
            lambda_param=options.lambda_param,
            mu_param=options.mu_param,
            nu_param=options.nu_param,
            gather_distributed=self.gather_distributed,
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views)
        return self.criterion(z0, z1)
