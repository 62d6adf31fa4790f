"""Does a fine-tuning task's memory grow with its labeled subset? Peak RSS of one ``scratch`` run at
budget ``all``, on pools of each size, with the code before and after fine-tuning read its subset
a batch at a time, side by side in one run.

Writes folders of 32 px PNGs (10 classes) and a test split of 500, then runs
:func:`finetune.sweep.run_one` once per (size, code) in a fresh process with one torch thread, as
a Ray fine-tuning task does, and reads its peak resident memory (``ru_maxrss``) and the resident
memory it had before the run (imports and the item list). The run is short (``--steps``
optimizer steps): memory, not accuracy, is measured. The code before is a ``git worktree`` of
``--old`` (default: the commit before ``finetune/labeled.py`` was added), removed at the end.

    .venv/bin/python benchmarks/finetune_memory.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLASSES, SIZE, TEST_IMAGES = 10, 32, 500


def _write(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        pixels = rng.integers(0, 120, (SIZE, SIZE, 3), dtype=np.uint8)
        pixels[..., i % 3] += 100
        Image.fromarray(pixels).save(folder / f"c{i % CLASSES}" / f"{i:07d}.png")


def write_folder(folder: Path, n: int, first: int = 0) -> Path:
    """``n`` PNGs in class folders; kept for the next run (writing 100,000 takes a minute or two)."""
    if (folder / "done").exists():
        return folder
    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    chunks = [(folder, lo, min(lo + 2000, first + n)) for lo in range(first, first + n, 2000)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_write, chunks)
    (folder / "done").touch()
    return folder


def listed(folder: Path) -> tuple[list[str], np.ndarray]:
    """Items and labels of a class-folder root, without the study's listing and checks (whose
    own memory is not the fine-tuning task's)."""
    items = sorted(str(p) for p in folder.glob("c*/*.png"))
    return items, np.array([int(Path(i).parent.name[1:]) for i in items])


def child(pool: Path, test: Path, steps: int) -> None:
    """One ``scratch`` run at ``all``, in the code on ``sys.path``; prints its memory as JSON."""
    import psutil
    import torch

    import finetune.sweep
    from cluster.config import FinetuneConfig
    from finetune.sweep import RunSpec, Start, SweepInputs, run_one
    from pretrain.images import ImageSource

    torch.set_num_threads(1)
    pool_items, pool_y = listed(pool)
    test_items, test_y = listed(test)
    start = Start("small_cnn", 3, SIZE, {}, None, (0.5,) * 3, (0.25,) * 3)
    source = ImageSource(SIZE, 3)
    inputs = SweepInputs(pool_items, pool_y, test_items, test_y, CLASSES, {"scratch": start}, source)
    settings = {**FinetuneConfig().model_dump(), "steps": steps, "max_steps": steps}
    before = psutil.Process().memory_info().rss / 2**20
    result = run_one(RunSpec("scratch", "all", 0), inputs, settings)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    code = str(Path(finetune.sweep.__file__).resolve().parent.parent)
    print(json.dumps({"before_mb": before, "peak_mb": peak, "n_labels": result.n_labels, "code": code}))


def measure(tree: Path, pool: Path, test: Path, steps: int) -> dict:
    """The child in a fresh process whose imports come from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(pool), str(test), "--steps", str(steps)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["code"]) != tree.resolve():  # an installed copy would measure the wrong code
        raise SystemExit(f"the run meant for {tree} imported the code in {result['code']}")
    return result


def commit_before_change() -> str:
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "finetune/labeled.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("finetune/labeled.py is not committed yet: pass --old REF (the commit before the change)")
    return f"{added[-1]}~1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/labelcurve-finetune-memory"))
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each run")
    parser.add_argument("--old", help="git ref of the code before the change (default: found from the log)")
    parser.add_argument("--child", type=Path, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps)
        return
    old_ref = args.old or commit_before_change()
    test = write_folder(args.root / "test", TEST_IMAGES, first=10**7)
    pools = {n: write_folder(args.root / f"png-{n}", n) for n in args.sizes}
    old = Path(tempfile.mkdtemp(prefix="labelcurve-old-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), old_ref], cwd=ROOT, check=True, capture_output=True)
    try:
        rows = {n: (measure(old, pools[n], test, args.steps), measure(ROOT, pools[n], test, args.steps)) for n in pools}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    print(f"peak RSS of one scratch run at budget all, {SIZE} px RGB, {args.steps} steps, small_cnn, 1 thread")
    print(f"before: {old_ref}; after: the working tree")
    print("run adds: the peak less the memory before the run (imports, the item list)")
    print(f"{'images':>9} {'before: peak':>14} {'run adds':>9} {'after: peak':>14} {'run adds':>9}")
    for n, (before, after) in rows.items():
        cells = [f"{r['peak_mb']:>11.0f} MB {r['peak_mb'] - r['before_mb']:>+6.0f} MB" for r in (before, after)]
        print(f"{n:>9,} {cells[0]} {cells[1]}")


if __name__ == "__main__":
    main()
