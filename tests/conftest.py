"""Shared fixtures: generated image folders, a CLI runner in a clean working directory, free
ports, and a headless Chromium (Debian's) for the tests that look at pages."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float = 60, process: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers; fails early when ``process`` (the server) has exited."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (e.g. 401 without a token): it is up
        except OSError:
            assert process is None or process.poll() is None, f"the server for {url} exited"
            assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s"
            time.sleep(0.3)


@pytest.fixture
def browser() -> Iterator:
    """A headless Chromium page driver: Debian's binary driven by playwright (whose own browser
    download needs the internet); skips, saying why, where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def mlflow_server(root: Path, port: int) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 over a SQLite store in ``root``; killed on exit."""
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
    command += ["--artifacts-destination", str(root / "a")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners: half the start time
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", seconds=180, process=server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
