"""Pretraining workers side by side: 1 vs 2 Ray Train workers, and the cost of a killed worker.

    .venv/bin/python benchmarks/scale_out.py [--epochs 10]

Runs the same small digits study three times in one temporary directory (Ray in-process, a local
MLflow store): with 1 pretraining worker, with 2, and with 2 where one worker is SIGKILLed after
epoch 2 (Ray Train restarts the group from the last checkpoint). Prints wall times, pretraining
seconds and their ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

BIN = Path(sys.executable).parent


def pretrain_run(store: Path, study: str):
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return client, None
    runs = client.search_runs([experiment.experiment_id], "tags.`labelcurve.role` = 'pretrain'")
    return client, runs[0] if runs else None


def study(folder: Path, name: str, epochs: int, workers: int, kill_after: int | None = None) -> dict:
    args = [
        str(BIN / "labelcurve"),
        "run",
        f"study={name}",
        f"pretrain.epochs={epochs}",
        "pretrain.checkpoint_every=1",
        f"pretrain.num_workers={workers}",
        "finetune.budgets=[1, 5]",
        "finetune.seeds=[0]",
        "finetune.steps=50",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    log = folder / f"{name}.log"
    process = subprocess.Popen(args, cwd=folder, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    killed = False
    while process.poll() is None:
        time.sleep(0.5)
        # Read the store only once the study created it: concurrent creation races MLflow's migrations.
        if kill_after and not killed and "MLflow: experiment" in log.read_text():
            try:
                client, run = pretrain_run(folder / "mlflow.db", name)
                epochs_done = len(client.get_metric_history(run.info.run_id, "train/loss")) if run else 0
            except Exception:  # the store is still being created
                epochs_done = 0
            if epochs_done >= kill_after:
                pids = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True).stdout
                os.kill(int(pids.split()[-1]), signal.SIGKILL)
                killed = True
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"study {name} failed with exit code {process.returncode}")
    _, run = pretrain_run(folder / "mlflow.db", name)
    return {"wall": wall, "pretrain": run.data.metrics["pretrain_seconds"], "killed": killed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    epochs = parser.parse_args().epochs
    with tempfile.TemporaryDirectory() as folder:
        one = study(Path(folder), "workers-1", epochs, 1)
        two = study(Path(folder), "workers-2", epochs, 2)
        hit = study(Path(folder), "workers-2-killed", epochs, 2, kill_after=2)
    print(f"digits, SimCLR, {epochs} epochs, per-worker batch 128, on {os.cpu_count()} CPU cores")
    print(f"{'':<28}{'study wall s':>14}{'pretraining s':>15}")
    for label, row in [("1 worker", one), ("2 workers", two), ("2 workers, 1 killed at ep. 2", hit)]:
        print(f"{label:<28}{row['wall']:>14.1f}{row['pretrain']:>15.1f}")
    print(f"speed-up of pretraining, 2 vs 1 workers: {one['pretrain'] / two['pretrain']:.2f}x")
    print(
        f"time lost to the killed worker: {hit['pretrain'] - two['pretrain']:.1f} s of pretraining "
        f"({hit['pretrain'] / two['pretrain']:.2f}x)"
    )


if __name__ == "__main__":
    main()
