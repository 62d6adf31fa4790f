"""One rule for "the same pretraining": a study that differs only in fine-tuning reuses the
finished pretraining run and its model version, found across the study's runs by fingerprint."""

from __future__ import annotations

from mlflow import MlflowClient

from cluster.config import load_config
from cluster.study import reusable_pretraining
from cluster.tracking import PRETRAIN, PRETRAINING, StudyTracker

DIGEST = "manifest-1"


def pretraining(*overrides: str, digest: str = DIGEST, repeat: int = 0) -> str:
    return load_config(None, ["study=reuse", *overrides]).pretraining_fingerprint(digest, repeat)


def test_only_pretraining_settings_data_and_seed_change_the_pretraining_fingerprint():
    same = pretraining()
    for finetune_only in ("finetune.lr=0.01", "finetune.epochs=3", "finetune.linear_c=0.5", "finetune.seeds=[5]"):
        assert pretraining(finetune_only) == same, finetune_only
    assert pretraining("pretrain.repeats=3") == same  # more repeats add pretrainings; the first one is the same
    assert pretraining("pretrain.storage_path=/elsewhere") == same
    for changed in ("pretrain.lr=0.01", "pretrain.epochs=3", "seed=1", "data.split_seed=1"):
        assert pretraining(changed) != same, changed
    assert pretraining(digest="manifest-2") != same  # other files
    assert pretraining(repeat=1) != same and pretraining(repeat=1) == pretraining("seed=1")  # its seed: seed + repeat
    study_run = ("data", "pretrain", "finetune")
    assert load_config().fingerprint(*study_run) != load_config(None, ["finetune.lr=0.01"]).fingerprint(*study_run)


def test_a_changed_finetuning_recipe_finds_the_finished_pretraining_of_another_study_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, client = StudyTracker(uri, "reuse"), MlflowClient(uri)
    a = load_config(None, ["study=reuse"])
    b = load_config(None, ["study=reuse", "finetune.lr=0.01"])
    other = load_config(None, ["study=reuse", "pretrain.epochs=3"])

    study_a = tracker.open_parent(a.fingerprint("data", "pretrain", "finetune"), DIGEST, {})[0]
    fingerprint = a.pretraining_fingerprint(DIGEST)
    tags = {PRETRAINING: fingerprint}
    pretrained = tracker.start_child(study_a, PRETRAIN, "pretrain", "pretrain-simclr", {}, tags=tags)
    client.create_registered_model("simclr-small_cnn-digits")
    version = client.create_model_version("simclr-small_cnn-digits", "file:///nowhere", run_id=pretrained)
    tracker.finish(pretrained)
    study_b = tracker.open_parent(b.fingerprint("data", "pretrain", "finetune"), DIGEST, {})[0]
    assert study_b != study_a  # a new study run for the new recipe ...

    run, model = reusable_pretraining(tracker, b.pretraining_fingerprint(DIGEST))  # ... and the old pretraining
    assert run.info.run_id == pretrained and run.data.tags["mlflow.parentRunId"] == study_a
    assert model == f"models:/simclr-small_cnn-digits/{version.version}"
    assert reusable_pretraining(tracker, other.pretraining_fingerprint(DIGEST)) is None
    assert reusable_pretraining(tracker, b.pretraining_fingerprint("manifest-2")) is None


def test_an_unfinished_pretraining_is_not_reused(tmp_path):
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "reuse")
    cfg = load_config(None, ["study=reuse"])
    study = tracker.open_parent(cfg.fingerprint("data", "pretrain", "finetune"), DIGEST, {})[0]
    fingerprint = cfg.pretraining_fingerprint(DIGEST)
    killed = tracker.start_child(study, PRETRAIN, "pretrain", "pretrain-simclr", {}, tags={PRETRAINING: fingerprint})
    tracker.finish(killed, "KILLED")
    assert reusable_pretraining(tracker, fingerprint) is None
