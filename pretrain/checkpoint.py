"""Pretrained backbones on disk: weights as safetensors plus a model card, loaded without pickle.

A backbone folder holds ``model.safetensors`` (the backbone's state dict) and ``card.json``
(everything needed to use it elsewhere: architecture, input size and channels, normalization,
provenance). :func:`load_backbone` accepts such a folder, an MLflow ``models:/`` or ``runs:/``
URI, or a ``.pt``/``.pth``/``.ckpt`` state dict beside a card; pickles are only ever read with
``torch.load(weights_only=True)``, which refuses anything that would run code.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from dataclasses import asdict
from dataclasses import field as dc_field
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain.backbone_specs import BACKBONE_FAMILIES, BackboneError
from pretrain.backbones import build_backbone
from pretrain.views import EvalTransform

WEIGHTS_FILE, CARD_FILE = "model.safetensors", "card.json"
ARTIFACT_DIR = "backbone"  # where a pretraining run keeps the folder among its MLflow artifacts
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}


class UnsafeCheckpointError(BackboneError):
    """A checkpoint whose pickle would execute code; it is refused, never run."""


_Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e3, le=1e3)]
_Positive = Annotated[float, Field(allow_inf_nan=False, gt=1e-6, le=1e3)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class BackboneCard:
    """What a backbone needs to be used on a new task, and where it came from.

    A pydantic dataclass: a card read from disk is checked (types, bounds, no unknown keys)
    before anything is built from it, so a hostile card cannot make us allocate or divide by 0.
    """

    backbone: str
    in_channels: Literal[1, 3]
    image_size: Annotated[int, Field(ge=4, le=1024)]
    mean: Annotated[list[_Finite], Field(min_length=1, max_length=3)]
    std: Annotated[
        list[Annotated[float, Field(allow_inf_nan=False, gt=1e-6, le=1e3)]], Field(min_length=1, max_length=3)
    ]
    feature_dim: Annotated[int, Field(ge=1, le=65536)]
    options: dict[str, bool | Annotated[int, Field(ge=1, le=1024)]] = dc_field(default_factory=dict)
    method: Annotated[str, Field(max_length=100)] = ""
    dataset: Annotated[str, Field(max_length=200)] = ""
    epochs: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    knn_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    study: Annotated[str, Field(max_length=200)] = ""
    run_id: Annotated[str, Field(max_length=100)] = ""
    extra: dict[str, str | int | float | bool | None] = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_FAMILIES:
            raise ValueError(f"unknown backbone '{self.backbone}'")
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(f"mean and std need {self.in_channels} values, one per channel")

    def tags(self) -> dict[str, str]:
        """Flat string tags for the model registry."""
        flat = {k: v for k, v in asdict(self).items() if k != "extra" and v not in (None, "", {})}
        return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in flat.items()}


def save_backbone(folder: str | Path, state: dict[str, torch.Tensor], card: BackboneCard) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_FILE))
    (folder / CARD_FILE).write_text(json.dumps(asdict(card), indent=2))
    return folder


def read_card(folder: str | Path) -> BackboneCard:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise BackboneError(f"no {CARD_FILE} in '{folder}': a backbone folder needs its model card")
    if path.stat().st_size > 1_000_000:
        raise BackboneError(f"{path} is over 1 MB: a model card is a few hundred bytes, this is not one")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return BackboneCard(**raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "card"
        raise BackboneError(f"{path}: '{key}': {first['msg']}: fix or replace the model card") from None
    except (ValueError, TypeError, RecursionError) as error:
        raise BackboneError(f"{path} is not a valid model card ({str(error)[:100]}): fix or replace it") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n")[0][:200]
        raise UnsafeCheckpointError(
            f"refusing to load '{path}': its pickle would run code or import objects ({reason}); "
            "save weights with safetensors or torch.save(model.state_dict())"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
        state = {k.removeprefix("backbone."): v for k, v in state["state_dict"].items() if k.startswith("backbone.")}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"'{path}' does not hold a state dict of tensors")
    return state


def fetch(source: str, folder: str | Path | None = None) -> Path:
    """A local folder or weights file for ``source``; MLflow URIs are downloaded into ``folder``."""
    if source.startswith(("models:/", "runs:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        uri = source.rstrip("/")
        if uri.startswith("runs:/") and uri.count("/") == 1:  # a run: its backbone folder
            uri = f"{uri}/{ARTIFACT_DIR}"
        target = str(folder or tempfile.mkdtemp(prefix="labelcurve-backbone-"))
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target))
        except MlflowException as error:
            raise BackboneError(f"cannot fetch '{source}': {error.message.splitlines()[0]}") from None
    path = Path(source).expanduser()
    if not path.exists():
        raise BackboneError(f"backbone '{source}' not found: give a folder, a models:/ or a runs:/ URI")
    return path


def read_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], BackboneCard]:
    """Weights and card from a backbone folder, or from a weights file with ``card.json`` beside it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    card = read_card(folder)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if path.is_dir() and not weights.is_file():
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise BackboneError(f"no {WEIGHTS_FILE} in '{folder}'")
        weights = pickles[0]
    return _read_weights(weights), card


def build_from_state(state: dict[str, torch.Tensor], card: BackboneCard) -> nn.Module:
    backbone = build_backbone(card.backbone, card.in_channels, card.image_size, **card.options)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as error:
        raise BackboneError(f"weights do not fit backbone '{card.backbone}': {str(error).splitlines()[0]}") from None
    return backbone.eval()


def load_backbone(source: str) -> tuple[nn.Module, EvalTransform]:
    """The feature extractor and its eval transform, ready for a new task.

    ``source`` is ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/RUN_ID``, a pulled
    folder, or a state-dict file beside a ``card.json``. Example::

        backbone, transform = load_backbone("models:/simclr-small_cnn-digits@latest")
        features = backbone(transform(images))  # uint8 N x C x H x W -> N x feature_dim
    """
    state, card = read_backbone(fetch(source))
    return build_from_state(state, card), EvalTransform(card.image_size, card.in_channels, card.mean, card.std)
