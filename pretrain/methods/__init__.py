"""Self-supervised methods, one file each on the thin base in :mod:`pretrain.methods.base`.

A method's options are the keyword-only arguments of its ``__init__``: :func:`options_schema`
turns them into a typed pydantic model, so ``pretrain.options`` is checked (names, types) with
no second list of defaults to keep in sync.
"""

from __future__ import annotations

import inspect
import typing
from functools import cache

from pydantic import BaseModel, ConfigDict, create_model

from pretrain.methods.barlow_twins import BarlowTwins
from pretrain.methods.base import SSLMethod
from pretrain.methods.byol import BYOL
from pretrain.methods.dino import DINO
from pretrain.methods.mae import MAE
from pretrain.methods.moco_v2 import MoCoV2
from pretrain.methods.moco_v3 import MoCoV3
from pretrain.methods.simclr import SimCLR
from pretrain.methods.simsiam import SimSiam
from pretrain.methods.swav import SwAV
from pretrain.methods.vicreg import VICReg

METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "moco_v3": MoCoV3,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "dino": DINO,
    "swav": SwAV,
    "mae": MAE,
}


@cache
def options_schema(name: str) -> type[BaseModel]:
    """The typed options of method ``name``: its keyword-only ``__init__`` arguments."""
    cls = METHODS[name]
    hints = typing.get_type_hints(cls.__init__)
    fields = {
        p.name: (hints[p.name], p.default)
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid"), **fields)


def build_method(name: str, backbone, options: dict, **base) -> SSLMethod:
    """Method ``name`` around ``backbone``; ``base`` are :class:`SSLMethod`'s training settings."""
    return METHODS[name](backbone, **options_schema(name)(**options).model_dump(), **base)


__all__ = [
    "BYOL",
    "DINO",
    "MAE",
    "METHODS",
    "BarlowTwins",
    "MoCoV2",
    "MoCoV3",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "VICReg",
    "build_method",
    "options_schema",
]
