"""How long the CLI takes to answer ``--help`` and bad input: this tree against an earlier commit.

Each command runs in a fresh interpreter from an empty folder, the sides alternating; the table
shows the median wall seconds of ``--repeats`` runs and the ratio.

    python benchmarks/cli_time.py --ref 950e265 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quickstart_time import ROOT, worktree

COMMANDS = {
    "--help": ["--help"],
    "run --help": ["run", "--help"],
    "config typo": ["run", "pretrain.epoch=5"],
    "missing data.path": ["run", "data.name=folder", "data.path=/nonexistent/images"],
    "budget > class (digits)": ["run", "finetune.budgets=[1000]"],
}


def seconds(code: Path, argv: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONPATH": str(code)}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "from cluster.cli import main; main()", *argv],
            cwd=folder,
            env=env,
            capture_output=True,
        )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="950e265", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    with worktree(args.ref) as old:
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                for side, code in ((args.ref, old), ("this tree", ROOT)):
                    times.setdefault((name, side), []).append(seconds(code, argv))
    print(f"\n{'command':<26} {args.ref + ' s':>12} {'this tree s':>12} {'ratio':>7}")
    for name in COMMANDS:
        old_s, new_s = (statistics.median(times[name, side]) for side in (args.ref, "this tree"))
        print(f"{name:<26} {old_s:>12.2f} {new_s:>12.2f} {new_s / old_s:>7.2f}")


if __name__ == "__main__":
    main()
