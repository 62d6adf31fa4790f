"""Register a backbone, pull it by name in fresh processes, and transfer it to other classes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from pretrain import load_backbone
from pretrain.backbones import build_backbone
from tests.conftest import write_image_folder

pytestmark = pytest.mark.slow

SOURCE = [
    "study=source",
    "data.classes=['0','1','2','3','4']",
    "pretrain.epochs=2",
    "pretrain.batch_size=64",
    "pretrain.model_name=digits04",
    "finetune.arms=[ssl-linear]",
    "finetune.budgets=[1]",
    "finetune.seeds=[0]",
]
TARGET = [
    "study=target",
    "data.classes=['5','6','7','8','9']",
    "finetune.arms=[transfer-linear, transfer-finetune, scratch]",
    "finetune.budgets=[1, 2, 5]",
    "finetune.seeds=[0]",
    "finetune.steps=10",
]

EMBED = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import save_file
    from pretrain import load_backbone
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    backbone, transform = load_backbone(sys.argv[1])
    with torch.no_grad():
        save_file({"features": backbone(transform(images))}, sys.argv[2])
    """
)


def test_register_pull_transfer(labelcurve, tmp_path):
    source = labelcurve("run", *SOURCE)
    assert source.returncode == 0, source.stderr[-3000:]
    assert "registered models:/digits04/1" in source.stdout

    listing = labelcurve("model", "list")
    assert listing.returncode == 0 and "digits04" in listing.stdout and "small_cnn" in listing.stdout

    pulled = labelcurve("model", "pull", "digits04@latest", "-o", "pulled")
    assert pulled.returncode == 0, pulled.stderr
    assert {p.name for p in (tmp_path / "pulled").iterdir()} == {"model.safetensors", "card.json"}

    # The pretraining run's own weights, embedded here ...
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (version,) = client.search_model_versions("name='digits04'")
    assert version.tags["method"] == "simclr" and version.tags["dataset"] == "digits"
    assert float(version.tags["knn_accuracy"]) > 0.2 and version.tags["study"] == "source"
    state = load_file(client.download_artifacts(version.run_id, "backbone/model.safetensors", str(tmp_path)))
    expected_backbone = build_backbone("small_cnn", 1)
    expected_backbone.load_state_dict(state)
    _, transform = load_backbone(str(tmp_path / "pulled"))
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        expected = expected_backbone.eval()(transform(images))
    # ... equal to the features of fresh processes that pull by registry name and by folder.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for index, where in enumerate(["models:/digits04@latest", str(tmp_path / "pulled")]):
        out = tmp_path / f"features{index}.safetensors"
        done = subprocess.run([sys.executable, "-c", EMBED, where, str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert torch.equal(load_file(str(out))["features"], expected)

    aliased = labelcurve("model", "alias", "digits04/1", "champion")
    assert aliased.returncode == 0 and "models:/digits04@champion -> version 1" in aliased.stdout

    # Transfer to other classes: no pretraining, the transfer arms' runs and curve land in MLflow.
    target = labelcurve("run", *TARGET, "finetune.init=models:/digits04@champion")
    assert target.returncode == 0, target.stderr[-3000:]
    assert "pretraining:" not in target.stdout and "transfer-linear" in target.stdout
    experiment = client.get_experiment_by_name("target")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("labelcurve.role") == "study")
    assert parent.data.params["finetune.init"] == "models:/digits04/1"  # the alias, resolved
    arms = [r.data.params["arm"] for r in runs if r.data.tags.get("labelcurve.role") == "finetune"]
    assert sorted(arms) == sorted(["transfer-linear", "transfer-finetune", "scratch"] * 3)
    assert "accuracy/transfer-linear" in parent.data.metrics
    assert "curve.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    write_image_folder(tmp_path / "rgb", {"a": 6, "b": 6})
    for args, fragment in [
        (("finetune.init=models:/nope@latest",), "no registered model 'nope': registered are digits04"),
        (("finetune.init=models:/digits04@gold",), "has no alias 'gold': its aliases are latest, champion"),
        (("finetune.init=models:/digits04/7",), "has no version 7: its versions are [1]"),
        (("finetune.init=models:/digits04@latest", "data.image_size=32"), "set data.image_size=16"),
        (
            (
                "finetune.init=models:/digits04@latest",
                "data.name=folder",
                f"data.path={tmp_path / 'rgb'}",
                "data.classes=null",
                "finetune.budgets=[1]",
            ),
            "takes 1-channel images and the data has 3: set data.channels=1",
        ),
    ]:
        refused = labelcurve("run", *TARGET, *args)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.strip().startswith("Error: ") and fragment in refused.stderr

    missing = labelcurve("model", "pull", "nope", "-o", "x")
    assert missing.returncode == 2 and "no registered model 'nope'" in missing.stderr
    assert not (tmp_path / "x").exists()  # nothing created for a model that does not exist
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    busy = labelcurve("model", "pull", "digits04@latest", "-o", "mine")
    assert busy.returncode == 2 and "'mine' is not empty" in busy.stderr and "--force" in busy.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    forced = labelcurve("model", "pull", "digits04@latest", "-o", "mine", "--force")
    assert forced.returncode == 0, forced.stderr
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {"notes.txt", "model.safetensors", "card.json"}
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    offline = labelcurve("model", "list", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert offline.returncode == 2 and "is not reachable" in offline.stderr
