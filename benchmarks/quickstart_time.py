"""The quickstart's wall time, this tree against an earlier commit, side by side in one run.

Issue 10 asks that the digits quickstart stay within 10% of the in-memory data path it replaced
(commit 6a595b8: every image decoded into one tensor, a DataLoader in each Ray Train worker).
Each side runs ``labelcurve run`` in a fresh folder (its own MLflow store and Ray storage) with
the same interpreter; the sides alternate so that machine drift hits both.

    python benchmarks/quickstart_time.py --ref 6a595b8 --repeats 1

The reference does less work per study: its samplers dropped about a fifth of the images per
epoch (1,024 of 1,257 digits trained on) and every fine-tuning run took 150 steps. ``--tree``
overrides apply to this tree only, for a comparison at equal work:

    python benchmarks/quickstart_time.py --repeats 2 --tree pretrain.epochs=49 finetune.max_steps=150
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A checkout of ``ref`` beside this one, removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder, "ref")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), ref], check=True)
        try:
            yield old
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)


def run_once(code: Path, overrides: list[str]) -> tuple[float, float | None]:
    """Wall seconds of one quickstart from ``code``, and the pretraining seconds it printed."""
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONPATH": str(code), "COLUMNS": "200"}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", "from cluster.cli import main; main()", "run", *overrides],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"quickstart from {code} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    match = re.search(r"pretraining: done in (\d+) s", done.stdout)
    return seconds, float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="6a595b8", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for both sides, e.g. pretrain.epochs=20")
    parser.add_argument("--tree", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for this tree only")
    args = parser.parse_args()
    with worktree(args.ref) as old:
        rows: dict[str, list[tuple[float, float | None]]] = {args.ref: [], "this tree": []}
        for _ in range(args.repeats):
            for name, code, extra in ((args.ref, old, []), ("this tree", ROOT, args.tree)):
                rows[name].append(run_once(code, [*args.overrides, *extra]))
                print(name, rows[name][-1], flush=True)
    print(f"\n{'code':<12} {'wall s':>8} {'pretrain s':>11}")
    for name, runs in rows.items():
        for wall, pre in runs:
            print(f"{name:<12} {wall:>8.0f} {pre if pre is not None else float('nan'):>11.0f}")
    mean = {name: sum(w for w, _ in runs) / len(runs) for name, runs in rows.items()}
    print(f"\nwall time, this tree / {args.ref}: {mean['this tree'] / mean[args.ref]:.2f}")


if __name__ == "__main__":
    main()
