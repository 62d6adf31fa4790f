"""SimSiam: BYOL without the momentum teacher; a stop-gradient alone prevents collapse."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from pretrain.method_options import SimSiamOptions
from pretrain.methods.base import SSLMethod


class SimSiam(SSLMethod):
    """SimSiam (Chen and He, CVPR 2021, https://arxiv.org/abs/2011.10566).

    Example::

        method = SimSiam(resnet(18, cifar_stem=True), SimSiamOptions(projection_dim=2048))
        loss = method.loss([view_a, view_b])
    """

    Options = SimSiamOptions

    def __init__(self, backbone, options: SimSiamOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        dim = backbone.feature_dim
        self.projection_head = SimSiamProjectionHead(dim, options.hidden_dim, options.projection_dim)
        self.prediction_head = SimSiamPredictionHead(
            options.projection_dim, options.prediction_dim, options.projection_dim
        )
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views)
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
