"""DINO: a student matches the centred, sharpened output of a momentum teacher across crops."""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.transforms import DINOTransform

from pretrain.method_options import DINOOptions
from pretrain.methods.base import SSLMethod
from pretrain.views import ViewSettings


class DINO(SSLMethod):
    """DINO (Caron et al., ICCV 2021, https://arxiv.org/abs/2104.14294).

    The teacher sees the two global crops, the student every crop (plus ``n_local_views`` local
    crops at half the size); the last head layer is frozen for the first epoch, as in the paper.
    Example::

        method = DINO(resnet(18, cifar_stem=True), DINOOptions(output_dim=2048))
        loss = method.loss([global_a, global_b, *local_crops])
    """

    Options = DINOOptions

    def __init__(self, backbone, options: DINOOptions | None = None, **base) -> None:
        super().__init__(backbone, options, **base)
        options = self.options
        self.ema = (options.momentum, 1.0)

        def head(freeze_last_layer: int = -1) -> DINOProjectionHead:
            return DINOProjectionHead(
                backbone.feature_dim,
                options.hidden_dim,
                options.bottleneck_dim,
                options.output_dim,
                True,
                freeze_last_layer,
            )

        self.student_head = head(freeze_last_layer=1)
        self.teacher_backbone = self.follow(self.backbone)
        self.teacher_head = self.follow(self.student_head, head())  # weight norm cannot be deep-copied
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.criterion = DINOLoss(
            output_dim=options.output_dim,
            warmup_teacher_temp_epochs=min(options.warmup_teacher_temp_epochs, self.max_epochs),
        )

    @classmethod
    def transform(cls, views: ViewSettings, options: DINOOptions | None = None) -> DINOTransform:
        options = options or cls.Options()
        common = views.common()
        size, scale = views.image_size, views.min_scale
        return DINOTransform(
            global_crop_size=size,
            global_crop_scale=(scale, 1.0),
            local_crop_size=max(size // 2, 4),
            local_crop_scale=(min(0.05, scale), scale),
            n_local_views=options.n_local_views,
            gaussian_blur=(2 * views.blur, views.blur / 5, views.blur),
            solarization_prob=views.solarize,
            **common,
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student = [self.student_head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, epoch=self.current_epoch)

    def on_after_backward(self) -> None:
        self.student_head.cancel_last_layer_gradients(self.current_epoch)
