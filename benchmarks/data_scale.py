"""Does memory stay flat as the pretraining pool grows? Listing time, peak memory, images/s.

Writes synthetic JPEG folders (10 classes, 64 px) of each size, then for each size in a fresh
process: the time to list and split it, the peak resident memory of the driver and of the
largest Ray worker (VmHWM and the private memory outside the object store of every Ray
process, sampled), and the pretraining throughput
(small CNN, SimCLR views, 2 Ray Train workers) over all ``--epochs`` epochs, the start of the
pipeline included, beside the first epoch's alone (a later epoch alone would flatter the stream:
its views were partly made while the one before trained), along each path: ``stream`` (views made
in Ray Data tasks) and ``local`` (each worker decodes and augments its own shard; a pool whose
decoded copy does not fit is read again every epoch) at every size, and at the smallest size
the in-memory baseline (every image decoded into one tensor, ``ray.put``, a DataLoader per
worker: the data path before the manifest). Separately, it times listing a folder of empty
files (``--list-files``).

    python benchmarks/data_scale.py --sizes 10000 50000 200000 --list-files 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10
PATHS = ["stream", "local", "in-memory"]
MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")  # the header line of a mapping in /proc/PID/smaps


def _write(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        pixels = rng.integers(0, 120, (64, 64, 3), dtype=np.uint8)
        pixels[..., i % 3] += 100
        Image.fromarray(pixels).save(folder / f"c{i % CLASSES}" / f"{i:07d}.jpg", quality=90)


def write_folder(root: Path, n: int) -> Path:
    folder = root / f"jpeg-{n}"
    if (folder / "done").exists():
        return folder
    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    chunks = [(folder, lo, min(lo + 2000, n)) for lo in range(0, n, 2000)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_write, chunks)
    (folder / "done").touch()
    return folder


def _peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def private_mb(pid: int) -> tuple[float, float]:
    """(private memory outside the object store, private pages of the object store) in MB.

    USS counts every page only this process maps, and a page of Ray's shared-memory object
    store that one process alone touched is such a page: a worker that read more blocks shows a
    larger USS without keeping anything. The object store is bounded by its own size, so the
    memory that could grow with the pool is the first figure."""
    own = store = 0
    mapping = ""
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    kb = int(line.split()[1])
                    if "plasma" in mapping or mapping.startswith("/dev/shm"):
                        store += kb
                    else:
                        own += kb
                elif MAPPING.match(line):
                    fields = line.split(maxsplit=5)
                    mapping = fields[5].strip() if len(fields) > 5 else ""
    except OSError:
        pass
    return own / 1024, store / 1024


class WorkerPeak(threading.Thread):
    """The largest memory of any Ray process, sampled every two seconds (reading smaps costs CPU
    the training shares): peak resident (VmHWM,
    which counts the object store's shared pages a process touched) and the private memory
    outside the object store (what a process keeps), with the name of the process that held it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.uss, self.store, self.holder, self.stop = 0.0, 0.0, 0.0, "", threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(2.0):
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info["cmdline"] or []
                if any("ray::" in part or "default_worker.py" in part for part in cmdline):
                    self.peak = max(self.peak, _peak_mb(process.pid))
                    own, store = private_mb(process.pid)
                    self.store = max(self.store, store)
                    if own > self.uss:
                        self.uss, self.holder = own, cmdline[0][:40]


def measure(folder: Path, path: str, image_size: int, epochs: int) -> dict:
    """One size in this process: listing, then ``epochs`` epochs of pretraining along ``path``."""
    from cluster.config import DataConfig, PretrainConfig
    from cluster.ray_runtime import connect
    from pretrain.data import load_data, plan_data

    started = time.perf_counter()
    plan = plan_data(DataConfig(name="folder", path=str(folder), image_size=image_size, test_fraction=0.02))
    listing = time.perf_counter() - started
    data = load_data(plan)
    settings = PretrainConfig(
        epochs=epochs,
        batch_size=128,
        warmup_epochs=0,
        online_knn=0,
        num_workers=2,
        storage_path=str(folder / "runs"),
        input="local" if path == "local" else "stream",
    ).model_dump()
    connect(None)
    watcher = WorkerPeak()
    watcher.start()
    if path == "in-memory":
        rates = in_memory_epochs(settings, data, image_size)
    else:
        from pretrain.train import pretrain

        rates = pretrain(settings, data, name=f"scale-{time.time():.0f}").rates
    watcher.stop.set()
    watcher.join()
    return {
        "images": len(data.pretraining_items),
        "listing_s": listing,
        "driver_peak_mb": _peak_mb(os.getpid()),
        "worker_peak_mb": watcher.peak,
        "worker_uss_mb": watcher.uss,
        "worker_store_mb": watcher.store,
        "largest_worker": watcher.holder,
        "images_per_s": len(rates) / sum(1 / r for r in rates),  # every epoch has the same images
        "first_epoch_images_per_s": rates[0],
    }


def in_memory_epochs(settings: dict, data, image_size: int) -> list[float]:
    """The data path before the manifest: decode the pool into one tensor, ``ray.put`` it, and
    let every worker ``ray.get`` all of it into a DataLoader."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    images = ray.put(data.source.read_many(data.pretraining_items)[0])

    def loop(config: dict) -> None:
        import pytorch_lightning as pl
        import ray.train
        from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
        from torch.utils.data import DataLoader, Dataset

        from pretrain.backbones import build_backbone
        from pretrain.methods import METHODS, build_method
        from pretrain.views import ViewSettings, to_pil

        pool = ray.get(config["images"])
        transform = METHODS["simclr"].transform(ViewSettings(image_size, tuple(data.mean), tuple(data.std)))

        class Views(Dataset):
            def __len__(self) -> int:
                return len(pool)

            def __getitem__(self, i: int):
                return transform(to_pil(pool[i]))

        epochs = config["epochs"]
        model = build_method("simclr", build_backbone("small_cnn", 3, image_size), lr=0.004, max_epochs=epochs)
        clock = {"seconds": []}

        class Clock(pl.Callback):
            def on_train_epoch_start(self, trainer, module) -> None:
                clock["start"] = time.perf_counter()

            def on_train_epoch_end(self, trainer, module) -> None:
                clock["seconds"].append(time.perf_counter() - clock["start"])

        trainer = pl.Trainer(
            max_epochs=epochs,
            strategy=RayDDPStrategy(),
            plugins=[RayLightningEnvironment()],
            callbacks=[Clock()],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer = prepare_trainer(trainer)
        trainer.fit(model, DataLoader(Views(), batch_size=128, shuffle=True, drop_last=True))
        with tempfile.TemporaryDirectory() as folder:  # Ray Train keeps the metrics of a checkpoint only
            rank0 = ray.train.get_context().get_world_rank() == 0
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank0 else None
            ray.train.report({"rates": [len(pool) / s for s in clock["seconds"]]}, checkpoint=checkpoint)

    trainer = TorchTrainer(
        loop,
        train_loop_config={"images": images, "epochs": settings["epochs"]},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(storage_path=settings["storage_path"], name=f"memory-{time.time():.0f}"),
    )
    return trainer.fit().metrics["rates"]


def list_empty_files(root: Path, n: int) -> tuple[float, int]:
    """Seconds to list ``n`` empty ``.jpg`` files in 1,000 folders, and how many were found."""
    from pretrain.manifest import Location

    folder = root / f"empty-{n}"
    if not (folder / "done").exists():
        for i in range(n):
            sub = folder / f"d{i % 1000:03d}"
            if i < 1000:
                sub.mkdir(parents=True, exist_ok=True)
            os.close(os.open(sub / f"{i:07d}.jpg", os.O_CREAT | os.O_WRONLY))
        (folder / "done").touch()
    location = Location.parse(str(folder))
    started = time.perf_counter()
    found = location.images(location.path)
    return time.perf_counter() - started, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--list-files", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/labelcurve-data-scale"))
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="training size; the files are 64 px (at 64 px the CNN, not the data, bounds a 2-core machine)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=PATHS,
        help="the paths compared (in-memory at the smallest size only: it cannot hold a large pool)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="pretraining epochs per run")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.path, args.image_size, args.epochs)), flush=True)
        return
    rows = []
    # the three paths side by side first, then the larger pools
    smallest = min(args.sizes)
    runs = [(smallest, p) for p in args.paths]
    runs += [(size, p) for size in sorted(args.sizes) if size != smallest for p in args.paths if p != "in-memory"]
    for size, path in runs:
        folder = write_folder(args.root, size)
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(folder),
                "--path",
                path,
                "--image-size",
                str(args.image_size),
                "--epochs",
                str(args.epochs),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            sys.exit(f"size {size} failed:\n{child.stderr[-3000:]}")
        rows.append({"path": path, **json.loads(lines[0][7:])})
        print(rows[-1], flush=True)
    header = f"{'path':<10} {'images':>8} {'listing s':>10} {'driver MB':>10} {'worker MB':>10} {'worker own':>10}"
    print(f"\n{header} {'store MB':>9} {'img/s':>7} {'1st epoch':>9}  largest worker")
    for r in rows:
        print(
            f"{r['path']:<10} {r['images']:>8} {r['listing_s']:>10.1f} {r['driver_peak_mb']:>10.0f} "
            f"{r['worker_peak_mb']:>10.0f} {r['worker_uss_mb']:>10.0f} {r['worker_store_mb']:>9.0f} "
            f"{r['images_per_s']:>7.0f} {r['first_epoch_images_per_s']:>9.0f}  {r['largest_worker']}"
        )
    print()
    baseline = {r["images"]: r["images_per_s"] for r in rows if r["path"] == "in-memory"}
    for path in ("stream", "local"):
        sized = [r for r in rows if r["path"] == path]
        if len(sized) > 1:
            small, large = sized[0], sized[-1]
            driver, worker, uss = (
                large[k] / max(small[k], 1e-9) for k in ("driver_peak_mb", "worker_peak_mb", "worker_uss_mb")
            )
            print(
                f"{path}: driver memory {large['images']} vs {small['images']} images: {driver:.2f}x; "
                f"largest worker: {worker:.2f}x (private outside the object store {uss:.2f}x)"
            )
        for r in sized if baseline else []:
            reference, rate = min(baseline), baseline[min(baseline)]
            print(f"{path} at {r['images']} vs in-memory at {reference} images/s: {r['images_per_s'] / rate:.2f}")
    if args.list_files:
        seconds, found = list_empty_files(args.root, args.list_files)
        print(f"listing {found} empty files in 1,000 folders: {seconds:.1f} s")


if __name__ == "__main__":
    main()
