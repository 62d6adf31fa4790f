"""Bad input through the real CLI: one line naming the fix, exit code 2, no compute spent."""

import time

import pytest

from cluster.config import DEFAULT_CONFIG
from tests.conftest import write_image_folder


def assert_rejected_before_compute(result, cwd, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    # Nothing started: no tracking store, no Ray Train storage.
    assert not (cwd / "mlflow.db").exists()
    assert not (cwd / "labelcurve-runs").exists()


def test_unknown_key_suggests_the_nearest(labelcurve, tmp_path):
    result = labelcurve("run", "pretrain.epoch=3")
    assert_rejected_before_compute(result, tmp_path, "did you mean 'pretrain.epochs'?")


def test_malformed_override(labelcurve, tmp_path):
    result = labelcurve("run", str(DEFAULT_CONFIG), "finetune.seeds")
    assert_rejected_before_compute(result, tmp_path, "malformed override 'finetune.seeds': write key=value")


def test_missing_config_file(labelcurve, tmp_path):
    result = labelcurve("run", "nope.yaml")
    assert_rejected_before_compute(result, tmp_path, "config file 'nope.yaml' not found")


def test_data_path_that_does_not_exist(labelcurve, tmp_path):
    result = labelcurve("run", "data.name=folder", f"data.path={tmp_path / 'nowhere'}")
    assert_rejected_before_compute(result, tmp_path, "does not exist")


def test_folder_without_images(labelcurve, tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    result = labelcurve("run", "data.name=folder", f"data.path={tmp_path / 'imgs'}")
    assert_rejected_before_compute(result, tmp_path, "no images found under")


def test_budget_larger_than_smallest_class(labelcurve, tmp_path):
    write_image_folder(tmp_path / "imgs", {"a": 12, "b": 8})
    result = labelcurve("run", "data.name=folder", f"data.path={tmp_path / 'imgs'}", "finetune.budgets=[1, 50]")
    assert_rejected_before_compute(result, tmp_path, "budget 50 labels per class is larger than class 'b'")


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (
            (),
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
            "MLflow tracking server http://127.0.0.1:9 is not reachable",
        ),
        (("--address", "127.0.0.1:9"), {}, "Ray at 127.0.0.1:9 is not reachable"),
    ],
)
def test_unreachable_services_fail_fast(labelcurve, tmp_path, args, env, fragment):
    started = time.monotonic()
    result = labelcurve("run", *args, env=env)
    assert time.monotonic() - started < 20  # interpreter start included; the checks time out at 5 s
    assert_rejected_before_compute(result, tmp_path, fragment)


def test_image_size_the_backbone_cannot_take(labelcurve, tmp_path):
    # digits are 16 px: the ImageNet stem of a ResNet downsamples 32x
    result = labelcurve("run", "pretrain.backbone=resnet18", "pretrain.cifar_stem=false")
    assert_rejected_before_compute(result, tmp_path, "resnet18 with the ImageNet stem", "set pretrain.cifar_stem=true")


def test_torchvision_dataset_root_without_its_files(labelcurve, tmp_path):
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    result = labelcurve("run", "data.name=cifar10", f"data.path={tmp_path / 'cifar'}")
    assert_rejected_before_compute(
        result, tmp_path, "has no complete CIFAR-10", "cifar-10-batches-py/", "set data.download=true"
    )


HEAVY = ("torch", "lightly", "pytorch_lightning", "ray", "mlflow", "sklearn")


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by ``python -X importtime`` (one line per imported module)."""
    names = (line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:"))
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["run", "pretrain.epoch=5"],
        ["run", "data.name=folder", "data.path=/nonexistent/images"],
        ["run", "pretrain.options.simclr.temperature=0"],
    ],
)
def test_help_and_bad_input_load_none_of_the_training_stack(argv, tmp_path):
    """`labelcurve --help` and a bad input answer before torch, Ray, MLflow or scikit-learn
    (seconds of imports each) are loaded; ``benchmarks/cli_time.py`` measures the time."""
    import subprocess
    import sys

    code = f"import sys; from cluster.cli import main; sys.argv = ['labelcurve', *{argv!r}]; main()"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == (0 if "--help" in argv else 2), result.stderr[-2000:]
    assert not _imported(result.stderr) & set(HEAVY), sorted(_imported(result.stderr) & set(HEAVY))
    if "--help" not in argv:
        assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_commands_are_grouped_and_old_spellings_point_to_the_new(labelcurve, tmp_path):
    top = labelcurve("--help")
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line.startswith("  ")]
    assert {"job", "model", "run", "ui", "predict"} <= set(commands)
    assert not {"submit", "jobs", "logs", "pull", "models", "alias"} & set(commands)  # hidden, not gone
    for group, subcommands in {
        "job": ["submit", "list", "status", "logs", "stop"],
        "model": ["list", "pull", "alias"],
    }.items():
        helped = labelcurve(group, "--help")
        assert "Example:" in helped.stdout and all(f"  {c} " in helped.stdout for c in subcommands), helped.stdout
    old = labelcurve("models", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert old.returncode == 2
    assert old.stderr.splitlines()[0] == "note: `labelcurve models` is now `labelcurve model list`"
    assert old.stderr.splitlines()[1].startswith("Error: MLflow tracking server http://127.0.0.1:9 is not reachable")


@pytest.mark.parametrize("command", ["ui", "server"])
def test_a_non_loopback_host_needs_expose_and_a_password(labelcurve, tmp_path, command):
    refused = labelcurve(command, "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "--host 0.0.0.0 lets anyone who can reach this machine read and write" in refused.stderr
    assert "add --expose" in refused.stderr
    unguarded = labelcurve(command, "--host", "0.0.0.0", "--expose", env={"MLFLOW_AUTH_ADMIN_PASSWORD": ""})
    assert unguarded.returncode == 2 and "set MLFLOW_AUTH_ADMIN_PASSWORD" in unguarded.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow-server.db").exists()
