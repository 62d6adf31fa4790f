"""Seeds derived from the study seed are the same in every process, whatever PYTHONHASHSEED is."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRAW = """
import json
from pretrain.seeds import rank_seed, view_seed
print(json.dumps({
    "ranks": [rank_seed(seed, rank) for seed in (0, 7) for rank in range(4)],
    "views": [view_seed(0, epoch, row) for epoch in range(2) for row in range(3)],
}))
"""


def _draw_in_fresh_process(hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", DRAW], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_per_rank_seeds_are_the_same_in_two_fresh_processes():
    first, second = _draw_in_fresh_process("1"), _draw_in_fresh_process("2")
    assert first == second
    ranks = first["ranks"]
    assert len(set(ranks)) == len(ranks)  # every (seed, rank) its own stream
    assert all(0 <= seed < 2**32 for seed in ranks + first["views"])


def test_no_seed_comes_from_the_salted_builtin_hash():
    """``hash()`` of anything holding a string differs per process: seeds go through pretrain.seeds."""
    calls = []
    for package in ("pretrain", "finetune", "cluster"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hash":
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []
