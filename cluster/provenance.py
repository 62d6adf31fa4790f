"""What code recorded a run: the package version and git commit, as MLflow source tags.

A study resumed by another version keeps its finished runs; the tags let a reader of the
tracking store see which runs came from which code, and the resume says so in one line.
"""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

VERSION = "labelcurve.version"
GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag: the UI shows it as the run's source version
SOURCE_NAME = "mlflow.source.name"
REPO = Path(__file__).resolve().parent.parent


@cache
def source_tags() -> dict[str, str]:
    """``labelcurve.version``, ``mlflow.source.name`` and, from a git checkout, the commit."""
    try:
        tags = {VERSION: version("labelcurve")}
    except PackageNotFoundError:  # run from a source tree that is not installed
        tags = {VERSION: "unknown"}
    tags[SOURCE_NAME] = "labelcurve"
    if (REPO / ".git").exists():
        found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        if found.returncode == 0:
            tags[GIT_COMMIT] = found.stdout.strip()
    return tags


def describe(tags: dict[str, str]) -> str:
    """``labelcurve 0.1.0 (commit 1a2b3c4)`` for the tags of a run."""
    commit = tags.get(GIT_COMMIT)
    return f"labelcurve {tags.get(VERSION, 'unknown')}" + (f" (commit {commit[:7]})" if commit else "")


def changed_since(recorded: dict[str, str]) -> str | None:
    """One line when a run was recorded by other code than this, else None."""
    now = source_tags()
    if all(recorded.get(key) == now.get(key) for key in (VERSION, GIT_COMMIT)):
        return None
    return f"this study run was recorded by {describe(recorded)}; this is {describe(now)}: continuing with it"
