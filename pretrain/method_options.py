"""The options of each SSL method: names, types, defaults and domains, in one typed schema.

They live apart from the methods (which need torch and lightly) so that a config is checked in
a fraction of a second, before anything heavy is imported: ``temperature: 0`` or a typo is a
one-line error, not a traceback after Ray has started. Each method takes its model::

    options = SimCLROptions(temperature=0.2)
    method = SimCLR(backbone, options)
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

Dim = Annotated[int, Field(ge=1, le=1 << 16)]
Temperature = Annotated[float, Field(gt=0, le=100)]
Momentum = Annotated[float, Field(ge=0, le=1)]
Weight = Annotated[float, Field(ge=0, le=1000)]
LocalViews = Annotated[int, Field(ge=0, le=32)]


class MethodOptions(BaseModel):
    """Base of every method's options; unknown names are errors, and so are infinite or NaN floats
    (``.inf`` is valid YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    #: backbone families the method works with (None: any); MAE needs a ViT
    families: ClassVar[tuple[str, ...] | None] = None


class SimCLROptions(MethodOptions):
    temperature: Temperature = 0.5
    projection_dim: Dim = 128


class MoCoV2Options(MethodOptions):
    temperature: Temperature = 0.1
    projection_dim: Dim = 128
    memory_bank_size: Annotated[int, Field(ge=1, le=1 << 20)] = 4096
    momentum: Momentum = 0.99


class MoCoV3Options(MethodOptions):
    temperature: Temperature = 0.2
    hidden_dim: Dim = 2048
    projection_dim: Dim = 256
    momentum: Momentum = 0.99


class BYOLOptions(MethodOptions):
    hidden_dim: Dim = 1024
    projection_dim: Dim = 256
    momentum: Momentum = 0.99


class SimSiamOptions(MethodOptions):
    hidden_dim: Dim = 2048
    projection_dim: Dim = 2048
    prediction_dim: Dim = 512


class BarlowTwinsOptions(MethodOptions):
    hidden_dim: Dim = 2048
    projection_dim: Dim = 2048
    lambda_param: Weight = 5e-3


class VICRegOptions(MethodOptions):
    hidden_dim: Dim = 2048
    projection_dim: Dim = 2048
    lambda_param: Weight = 25.0
    mu_param: Weight = 25.0
    nu_param: Weight = 1.0


class DINOOptions(MethodOptions):
    hidden_dim: Dim = 2048
    bottleneck_dim: Dim = 256
    output_dim: Dim = 2048
    n_local_views: LocalViews = 6
    warmup_teacher_temp_epochs: Annotated[int, Field(ge=0, le=100_000)] = 30
    momentum: Momentum = 0.996


class SwAVOptions(MethodOptions):
    projection_dim: Dim = 128
    n_prototypes: Dim = 512
    n_local_views: LocalViews = 4
    temperature: Temperature = 0.1
    freeze_prototypes_steps: Annotated[int, Field(ge=0, le=10_000_000)] = 300


class MAEOptions(MethodOptions):
    families: ClassVar[tuple[str, ...] | None] = ("vit",)
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.75
    decoder_dim: Dim = 256
    decoder_layers: Annotated[int, Field(ge=1, le=64)] = 4
    decoder_heads: Annotated[int, Field(ge=1, le=64)] = 8


METHOD_OPTIONS: dict[str, type[MethodOptions]] = {
    "simclr": SimCLROptions,
    "moco_v2": MoCoV2Options,
    "moco_v3": MoCoV3Options,
    "byol": BYOLOptions,
    "simsiam": SimSiamOptions,
    "barlow_twins": BarlowTwinsOptions,
    "vicreg": VICRegOptions,
    "dino": DINOOptions,
    "swav": SwAVOptions,
    "mae": MAEOptions,
}


def chosen_options(method: str, blocks: dict[str, dict]) -> MethodOptions:
    """The options of ``method`` from ``pretrain.options`` (one block per method name): its own
    block, every other option at the method's default."""
    return METHOD_OPTIONS[method].model_validate(blocks.get(method, {}))
