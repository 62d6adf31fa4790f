"""SwAV: predict one view's online cluster assignment (Sinkhorn-Knopp) from another view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from lightly.transforms import SwaVTransform

from pretrain.method_options import SwAVOptions
from pretrain.methods.base import SSLMethod
from pretrain.views import ViewSettings


class SwAV(SSLMethod):
    """SwAV (Caron et al., NeurIPS 2020, https://arxiv.org/abs/2006.09882).

    Two full-size crops plus ``n_local_views`` half-size crops (multi-crop); Sinkhorn runs over
    the global batch with ``gather_distributed``; the prototypes stay fixed for the first
    ``freeze_prototypes_steps`` steps, as in the paper. Example::

        method = SwAV(resnet(18, cifar_stem=True), SwAVOptions(n_prototypes=512))
        loss = method.loss([crop_a, crop_b, *small_crops])
    """

    Options = SwAVOptions

    def __init__(self, backbone, options: SwAVOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        dim = backbone.feature_dim
        self.projection_head = SwaVProjectionHead(dim, dim, options.projection_dim)
        self.prototypes = SwaVPrototypes(options.projection_dim, options.n_prototypes)
        self.freeze_prototypes_steps = options.freeze_prototypes_steps
        self.criterion = SwaVLoss(temperature=options.temperature, sinkhorn_gather_distributed=self.gather_distributed)

    @classmethod
    def transform(cls, views: ViewSettings, options: SwAVOptions | None = None) -> SwaVTransform:
        options = options or cls.Options()
        size, scale = views.image_size, views.min_scale
        return SwaVTransform(
            crop_sizes=(size, max(size // 2, 4)),
            crop_counts=(2, options.n_local_views),
            crop_min_scales=(scale, min(0.05, scale)),
            crop_max_scales=(1.0, scale),
            gaussian_blur=views.blur,
            **views.common(),
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        self.prototypes.normalize()
        scores = [self.prototypes(F.normalize(self.projection_head(self.backbone(v)), dim=1)) for v in views]
        return self.criterion(scores[:2], scores[2:])

    def on_after_backward(self) -> None:
        if self.global_step < self.freeze_prototypes_steps:
            for p in self.prototypes.parameters():
                p.grad = None
