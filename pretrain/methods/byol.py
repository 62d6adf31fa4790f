"""BYOL: predict a momentum teacher's projection of the other view; no negatives."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

from pretrain.method_options import BYOLOptions
from pretrain.methods.base import SSLMethod
from pretrain.views import ViewSettings


class BYOL(SSLMethod):
    """BYOL (Grill et al., NeurIPS 2020, https://arxiv.org/abs/2006.07733).

    The teacher's momentum rises from 0.99 to 1 on a cosine schedule; the two views are
    asymmetric (blur on the first, solarization on the second), as in the paper. Example::

        method = BYOL(resnet(18, cifar_stem=True))
        loss = method.loss([view_a, view_b])
    """

    Options = BYOLOptions

    def __init__(self, backbone, options: BYOLOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.ema = (options.momentum, 1.0)
        self.projection_head = BYOLProjectionHead(backbone.feature_dim, options.hidden_dim, options.projection_dim)
        self.prediction_head = BYOLPredictionHead(options.projection_dim, options.hidden_dim, options.projection_dim)
        self.backbone_momentum = self.follow(self.backbone)
        self.projection_head_momentum = self.follow(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    @classmethod
    def transform(cls, views: ViewSettings, options: BYOLOptions | None = None) -> BYOLTransform:
        size, scale = views.image_size, views.min_scale
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(
                input_size=size, min_scale=scale, gaussian_blur=2 * views.blur, **views.common()
            ),
            view_2_transform=BYOLView2Transform(
                input_size=size,
                min_scale=scale,
                gaussian_blur=views.blur / 5,
                solarization_prob=views.solarize,
                **views.common(),
            ),
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        predictions = [self.prediction_head(self.projection_head(self.backbone(v))) for v in views]
        with torch.no_grad():
            targets = [self.projection_head_momentum(self.backbone_momentum(v)) for v in views]
        return 0.5 * (self.criterion(predictions[0], targets[1]) + self.criterion(predictions[1], targets[0]))
