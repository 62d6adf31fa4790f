"""Self-supervised methods, one file each on the thin base in :mod:`pretrain.methods.base`.

A method's options are a typed model in :mod:`pretrain.method_options` (``Method.Options``),
the one place that states their names, defaults and domains.
"""

from __future__ import annotations

from pretrain.method_options import MethodOptions
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


def build_method(name: str, backbone, options: MethodOptions | None = None, **base) -> SSLMethod:
    """Method ``name`` around ``backbone`` (``options``: its defaults when None); ``base`` are
    :class:`SSLMethod`'s training settings."""
    return METHODS[name](backbone, options, **base)


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
]
