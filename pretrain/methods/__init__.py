"""Self-supervised methods, one file each on the thin base in :mod:`pretrain.methods.base`."""

from pretrain.methods.base import SSLMethod
from pretrain.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR}

__all__ = ["METHODS", "SSLMethod", "SimCLR"]
