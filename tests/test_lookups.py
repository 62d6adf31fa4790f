"""A look-up in a tracking store that does not exist (a study, a model) says so in one line, exit
code 2, without creating the store and within two seconds of CPU (a server is asked over REST:
tests/test_secrets.py)."""

from __future__ import annotations

import resource

import pytest

CPU_S = 2.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--help",), None),
        (
            ("run", "finetune.init=models:/no-such-model@latest", "finetune.arms=[scratch,transfer-linear]"),
            "model models:/no-such-model@latest",
        ),
        (("model", "pull", "no-such-model@latest", "-o", "x"), "model no-such-model@latest"),
        (("model", "alias", "no-such-model/1", "champion"), "model no-such-model/1"),
        (("predict", "--target", "0.9", "--study", "no-such-study"), "study 'no-such-study'"),
        (("backtest",), "a study"),
    ],
)
def test_a_lookup_in_a_missing_store_is_one_cheap_line_and_creates_nothing(labelcurve, tmp_path, args, fragment):
    before = _children_cpu()
    result = labelcurve(*args)
    cpu = _children_cpu() - before
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "x").exists()
    assert cpu < CPU_S, f"{cpu:.2f} s of CPU for labelcurve {' '.join(args)}"
    if fragment is None:
        assert result.returncode == 0
        return
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"Error: no tracking store at {tmp_path / 'mlflow.db'} to look up {fragment} in: "
        "run `labelcurve run` here first, or set MLFLOW_TRACKING_URI to the store of your studies"
    )


def test_model_list_of_a_missing_store_creates_none(labelcurve, tmp_path):
    result = labelcurve("model", "list")
    assert result.returncode == 0 and result.stdout.startswith("no registered backbones yet"), result.stderr
    assert not (tmp_path / "mlflow.db").exists()
