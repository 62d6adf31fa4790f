"""A local journal of finished fine-tuning results, so that a tracking server outage loses none.

Each result is appended to a JSON-lines file, and flushed to disk, before it is logged to MLflow,
and removed once MLflow has it. The next run of the same study records what the journal still
holds before anything else, instead of computing it again. One file per study run, on the
machine of the driver: ``~/.labelcurve/journal/<study>-<study run id>.jsonl``
(``LABELCURVE_JOURNAL_DIR`` moves the folder). The study run's lease keeps it to one writer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from cluster.tracking import TrackingUnreachable
from cluster.tracking_server import redacted
from finetune.grid import RunResult, RunSpec

FOLDER_ENV = "LABELCURVE_JOURNAL_DIR"


def journal_folder() -> Path:
    return Path(os.environ.get(FOLDER_ENV) or "~/.labelcurve/journal").expanduser()


def _line(result: RunResult) -> str:
    return json.dumps(asdict(result)) + "\n"


def _result(line: str) -> RunResult:
    fields = json.loads(line)
    return RunResult(spec=RunSpec(**fields.pop("spec")), **fields)


class Journal:
    """The finished results of one study run that MLflow may not have yet."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, study: str, parent_run_id: str, folder: Path | None = None) -> Journal:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", study)
        return cls((folder or journal_folder()) / f"{name}-{parent_run_id}.jsonl")

    def pending(self) -> list[RunResult]:
        """The results kept, oldest first. A line cut short by a crash mid-write is skipped: its
        run was never logged, so it is simply computed again."""
        if not self.path.exists():
            return []
        results = []
        for line in self.path.read_text().splitlines():
            try:
                results.append(_result(line))
            except ValueError:
                continue
        return results

    def __len__(self) -> int:
        return len(self.pending())

    def keep(self, result: RunResult) -> None:
        """Append ``result`` durably: it survives the driver being killed right after."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as out:
            out.write(_line(result))
            out.flush()
            os.fsync(out.fileno())

    def drop(self, key: str) -> None:
        """Remove the entries of run ``key`` (MLflow has it); the file goes with its last entry."""
        left = [result for result in self.pending() if result.spec.key != key]
        if not left:
            self.path.unlink(missing_ok=True)
            return
        staging = self.path.with_suffix(".tmp")
        staging.write_text("".join(_line(result) for result in left))
        os.replace(staging, self.path)  # atomic: a crash leaves the old journal or the new one

    def kept(self, error: TrackingUnreachable) -> TrackingUnreachable:
        """The line a driver ends with when the server is gone: what is kept, where, how to record it."""
        return TrackingUnreachable(self.kept_line(str(error)))

    def kept_line(self, why: str) -> str:
        """``why`` the driver stops, what the journal keeps, where, and the command that records it."""
        command = redacted(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))  # printed: no credentials
        return (
            f"{why}: {len(self)} finished runs kept in {self.path}; "
            f"when it is back, run `{command}` to record them without recomputing"
        )


def replay(journal: Journal, recorded: set[str], record: Callable[[RunResult], None]) -> list[str]:
    """Record the journal's results whose keys are not in ``recorded`` (the study's FINISHED
    runs), dropping each entry once MLflow has it; returns the keys recorded now."""
    done: list[str] = []
    for result in journal.pending():
        key = result.spec.key
        if key not in recorded and key not in done:
            record(result)
            done.append(key)
        journal.drop(key)
    return done
