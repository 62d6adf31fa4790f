"""MAE: mask most patches of an image and reconstruct their pixels from the visible ones."""

from __future__ import annotations

import torch
from lightly.models import utils
from lightly.models.modules import MAEDecoder
from lightly.transforms import MAETransform
from torch import nn

from pretrain.method_options import MAEOptions
from pretrain.methods.base import SSLMethod
from pretrain.views import ViewSettings


class MAE(SSLMethod):
    """Masked autoencoder (He et al., CVPR 2022, https://arxiv.org/abs/2111.06377); ViT backbones only.

    The encoder sees the ``1 - mask_ratio`` visible patches; a light decoder predicts the
    per-patch normalized pixels of the masked ones. Example::

        method = MAE(ViT(image_size=32, patch_size=4, hidden_dim=192, num_layers=12, num_heads=3))
        loss = method.loss([images])
    """

    Options = MAEOptions

    def __init__(self, backbone, options: MAEOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.mask_ratio, self.patch_size = options.mask_ratio, backbone.patch_size
        self.sequence_length = backbone.sequence_length
        in_channels = backbone.encoder.vit.conv_proj.in_channels
        self.mask_token = nn.Parameter(torch.zeros(1, 1, options.decoder_dim))
        self.decoder = MAEDecoder(
            seq_length=self.sequence_length,
            num_layers=options.decoder_layers,
            num_heads=options.decoder_heads,
            embed_input_dim=backbone.feature_dim,
            hidden_dim=options.decoder_dim,
            mlp_dim=options.decoder_dim * 4,
            out_dim=self.patch_size**2 * in_channels,
        )
        self.criterion = nn.MSELoss()

    @classmethod
    def transform(cls, views: ViewSettings, options: MAEOptions | None = None) -> MAETransform:
        return MAETransform(
            input_size=views.image_size, min_scale=views.min_scale, normalize=views.common()["normalize"]
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        images = views[0]
        idx_keep, idx_mask = utils.random_token_mask(
            size=(len(images), self.sequence_length), mask_ratio=self.mask_ratio, device=images.device
        )
        encoded = self.backbone.encode(images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.mask_token, (len(images), self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
        predicted = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
        patches = utils.normalize_mean_var(utils.patchify(images, self.patch_size), dim=-1)
        return self.criterion(predicted, utils.get_at_index(patches, idx_mask - 1))
