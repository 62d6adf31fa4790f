"""The arms of a study: a starting point for the backbone and a head trained on the labels."""

from __future__ import annotations

from dataclasses import dataclass

SSL, SCRATCH_START, TRANSFER = "ssl", "scratch", "transfer"  # starting points
LINEAR, FINETUNE = "linear", "finetune"  # heads


@dataclass(frozen=True)
class Arm:
    """``start``: the study's own SSL backbone, random init, or a pulled backbone (``finetune.init``).
    ``head``: a linear probe on frozen embeddings, or every layer trained with a linear head."""

    name: str
    start: str
    head: str


_ALL = [
    Arm("ssl-linear", SSL, LINEAR),
    Arm("ssl-finetune", SSL, FINETUNE),
    Arm("scratch", SCRATCH_START, FINETUNE),
    Arm("transfer-linear", TRANSFER, LINEAR),
    Arm("transfer-finetune", TRANSFER, FINETUNE),
]
BY_NAME = {arm.name: arm for arm in _ALL}


def start_key(start: str, seed: int, repeats: int = 1) -> str:
    """The starting point a run of ``seed`` trains from. With ``repeats`` pretrainings, seed s
    pairs with pretraining s mod repeats, so that the spread over seeds, and every interval
    fitted to it, holds how much another pretraining run moves the curve."""
    repeat = seed % repeats if start == SSL else 0
    return f"{start}-r{repeat}" if repeat else start


ARMS = tuple(BY_NAME)
DEFAULT_ARMS = ("ssl-linear", "ssl-finetune", "scratch")
SSL_LINEAR, SSL_FINETUNE, SCRATCH = DEFAULT_ARMS
