"""MoCo v3: a momentum encoder and a predictor, contrasted against the keys of the global batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from lightly.models.modules.heads import ProjectionHead
from lightly.utils.dist import gather, rank

from pretrain.method_options import MoCoV3Options
from pretrain.methods.base import SSLMethod


class MoCoV3(SSLMethod):
    """MoCo v3 (Chen, Xie and He, ICCV 2021, https://arxiv.org/abs/2104.02057).

    No memory bank: each query is contrasted against the momentum keys of every worker's batch
    (InfoNCE scaled by ``2 * temperature``), symmetrized over the two views. Example::

        method = MoCoV3(vit_small_backbone, MoCoV3Options(temperature=0.2))
        loss = method.loss([view_a, view_b])
    """

    Options = MoCoV3Options

    def __init__(self, backbone, options: MoCoV3Options | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.ema = (options.momentum, 1.0)
        dim = backbone.feature_dim
        self.projection_head = MoCoProjectionHead(
            dim, options.hidden_dim, options.projection_dim, num_layers=3, batch_norm=True
        )
        self.prediction_head = ProjectionHead(
            [
                (options.projection_dim, options.hidden_dim, torch.nn.BatchNorm1d(options.hidden_dim), torch.nn.ReLU()),
                (options.hidden_dim, options.projection_dim, None, None),
            ]
        )
        self.backbone_momentum = self.follow(self.backbone)
        self.projection_head_momentum = self.follow(self.projection_head)
        self.temperature = options.temperature

    def _contrast(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        query, key = F.normalize(query, dim=1), F.normalize(key, dim=1)
        keys = torch.cat(gather(key)) if self.gather_distributed and torch.distributed.is_initialized() else key
        offset = rank() * len(query) if len(keys) > len(query) else 0
        labels = torch.arange(len(query), device=query.device) + offset
        return F.cross_entropy(query @ keys.T / self.temperature, labels) * 2 * self.temperature

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        queries = [self.prediction_head(self.projection_head(self.backbone(v))) for v in views]
        with torch.no_grad():
            keys = [self.projection_head_momentum(self.backbone_momentum(v)) for v in views]
        return self._contrast(queries[0], keys[1]) + self._contrast(queries[1], keys[0])
