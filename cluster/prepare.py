"""Every check of a study's input that costs no compute, importable without torch or MLflow.

The CLI runs :func:`prepare_study` before it imports the training stack, so a missing folder, a
budget larger than a class or an unreachable server is reported within a second or two.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from cluster.config import StudyConfig
from cluster.console import progress_bars
from cluster.ray_runtime import check_ray_address
from cluster.tracking_server import check_lookup, check_tracking_server, redacted, tracking_uri
from finetune.budgets import check_budgets
from pretrain.backbone_specs import BackboneError, backbone_options
from pretrain.data import DataPlan, plan_data

if TYPE_CHECKING:
    from pretrain.checkpoint import BackboneCard


@dataclass
class Prepared:
    """The outcome of the cheap checks: where to track, what to load, what to transfer from."""

    uri: str
    plan: DataPlan
    init: str | None = None  # finetune.init with an alias resolved to a concrete model version
    transfer: tuple[dict, BackboneCard] | None = None


def prepare(cfg: StudyConfig, progress=None) -> Prepared:
    """All bad-input checks, cheap: tracking store reachable, data present, budgets possible,
    and a transfer backbone that exists and fits the data."""
    uri = tracking_uri()
    check_tracking_server(uri)
    check_ray_address(cfg.ray.address)
    if (cfg.finetune.init or "").startswith("models:/"):  # a missing model is said before data is read
        check_lookup(uri, model=cfg.finetune.init)
    plan = plan_data(cfg.data, progress)
    backbone_options(cfg.pretrain.backbone, plan.image_size, cfg.pretrain.cifar_stem, cfg.pretrain.patch_size)
    check_budgets(cfg.finetune.budgets, plan.class_counts())
    prepared = Prepared(uri, plan)
    if cfg.finetune.init:
        from cluster.registry import resolve, use_store  # MLflow and torch: only for a transfer arm
        from pretrain.checkpoint import fetch, read_backbone

        client = use_store(uri)
        init = resolve(client, cfg.finetune.init) if cfg.finetune.init.startswith("models:/") else cfg.finetune.init
        state, card = read_backbone(fetch(init))
        if card.in_channels != plan.channels:
            raise BackboneError(
                f"backbone {init} takes {card.in_channels}-channel images and the data has {plan.channels}: "
                f"set data.channels={card.in_channels}"
            )
        if card.image_size != plan.image_size:
            raise BackboneError(
                f"backbone {init} was pretrained on {card.image_size} px images and the data is "
                f"{plan.image_size} px: set data.image_size={card.image_size}"
            )
        prepared.init, prepared.transfer = init, (state, card)
    return prepared


@contextmanager
def data_progress(console: Console):
    """Progress of listing, verifying and sampling images (minutes on large folders), as bars on
    a terminal and as lines in a log."""
    with progress_bars(console, "data: ", transient=True) as advance:
        yield lambda step, n, total: advance(step, n, total)


def prepare_study(cfg: StudyConfig, console: Console) -> Prepared:
    """:func:`prepare` with progress bars for the listing (minutes on large folders), then what
    was understood of the data (layout, classes with counts, split sizes), before any compute."""
    with data_progress(console) as progress:
        prepared = prepare(cfg, progress)
    console.print(redacted(prepared.plan.summary()), markup=False, highlight=False)
    return prepared
