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
