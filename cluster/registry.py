"""The MLflow model registry of pretrained backbones: register, list, resolve, pull, alias.

Every pretraining registers its backbone folder (``model.safetensors`` + ``card.json``) as a new
version of a named model, tagged with its card. MLflow's reserved alias ``latest`` always names
the newest version (``models:/NAME@latest``); users add their own (``champion``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pretrain.checkpoint import ARTIFACT_DIR, BackboneCard, fetch, read_backbone
from pretrain.errors import LabelcurveError

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+|latest))?$")


class RegistryError(LabelcurveError, ValueError):
    """A registry problem, phrased as one line for the user."""


def default_model_name(method: str, backbone: str, dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{method}-{backbone}-{dataset}").strip("-")


def register(client: MlflowClient, name: str, run_id: str, card: BackboneCard) -> str:
    """A new version of ``name`` from a pretraining run's backbone folder; returns the version."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Pretrained backbone registered by labelcurve.")
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_DIR}"
    version = client.create_model_version(name, source, run_id=run_id, tags=card.tags())
    return version.version


def _split(source: str) -> tuple[str, str | None, str | None]:
    match = _URI.match(source if source.startswith("models:/") else f"models:/{source}")
    if not match:
        raise RegistryError(f"'{source}' is not NAME, NAME@ALIAS or NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def resolve(client: MlflowClient, source: str) -> str:
    """``models:/NAME@alias`` -> ``models:/NAME/VERSION``, with errors that list what exists."""
    name, alias, version = _split(source)
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" not in str(error.error_code):
            raise RegistryError(f"model registry unreachable: {error.message.splitlines()[0]}") from None
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none yet"
        raise RegistryError(f"no registered model '{name}': registered are {known}") from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if alias in (None, "latest") and version in (None, "latest"):
        return f"models:/{name}/{versions[-1]}"
    if alias:
        if alias not in model.aliases:
            names = ", ".join(["latest", *sorted(model.aliases)])
            raise RegistryError(f"model '{name}' has no alias '{alias}': its aliases are {names}")
        return f"models:/{name}/{model.aliases[alias]}"
    if int(version) not in versions:
        raise RegistryError(f"model '{name}' has no version {version}: its versions are {versions}")
    return f"models:/{name}/{version}"


def models(client: MlflowClient) -> list[dict]:
    """One row per registered model, with the tags of its newest version."""
    rows = []
    for model in client.search_registered_models():
        versions = sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version))
        if not versions:
            continue
        newest = versions[-1]
        aliases = {f"{a}->v{v}" for a, v in model.aliases.items()}
        rows.append(
            {
                "name": model.name,
                "versions": len(versions),
                "latest": newest.version,
                "aliases": ", ".join(sorted(aliases)),
                **newest.tags,
            }
        )
    return rows


def pull(client: MlflowClient, source: str, out: str | Path, force: bool = False) -> tuple[Path, BackboneCard]:
    """Write the backbone (``model.safetensors``) and its card (``card.json``) to ``out``.

    The model is resolved and downloaded into a temporary folder first, so a name that does not
    exist creates nothing; a non-empty ``out`` is refused unless ``force`` (then only the two
    files are replaced, nothing else in it is touched).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RegistryError(f"'{out}' is a file: pass a folder to write the backbone to")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RegistryError(f"'{out}' is not empty: pass an empty or new folder, or --force to overwrite its backbone")
    concrete = resolve(client, source)
    with tempfile.TemporaryDirectory(prefix="labelcurve-pull-") as staging:
        folder = fetch(concrete, staging)
        _, card = read_backbone(folder)  # validates: safetensors weights and a readable card
        out.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            shutil.move(str(item), out / item.name)
    return out, card


def use_store(uri: str) -> MlflowClient:
    """Point MLflow's global tracking and registry URIs (read by ``models:/`` downloads) at ``uri``."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)
