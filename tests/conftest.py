"""Shared fixtures: generated image folders and a CLI runner in a clean working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def write_image_folder(root: Path, per_class: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """Class folders of small RGB PNGs; class c is brighter in channel c % 3, so it is learnable."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(per_class.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def labelcurve(tmp_path):
    """Run the installed ``labelcurve`` CLI in ``tmp_path`` with its own MLflow store."""

    def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        environment.update(env or {})
        command = [str(Path(sys.executable).parent / "labelcurve"), *args]
        return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """The shared CIFAR-10 JPEG copy, unpacked once; skipped where ../shared/data is absent."""
    if not SHARED_CIFAR.is_file():
        pytest.skip(f"{SHARED_CIFAR} not present")
    target = tmp_path_factory.mktemp("cifar")
    with tarfile.open(SHARED_CIFAR) as archive:
        archive.extractall(target, filter="data")
    return target / "cifar10"
