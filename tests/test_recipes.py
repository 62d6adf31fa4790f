"""The scale-out recipes parse and say what they must: GPU workers, dashboards the submitter can
reach and nobody outside, labelcurve with data every pod mounts."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cluster.config import load_config

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "cluster" / "recipes"


def test_cluster_launcher_recipe():
    recipe = yaml.safe_load((RECIPES / "ray-cluster-gpu.yaml").read_text())
    gpu = recipe["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] >= gpu["min_workers"] >= 1
    assert recipe["head_node_type"] in recipe["available_node_types"]
    assert any("labelcurve" in command for command in recipe["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in command for command in recipe["head_start_ray_commands"])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Mount(_Strict):
    name: str
    mountPath: str
    readOnly: bool = False


class _Container(_Strict):
    name: str
    image: str
    resources: dict[str, dict[str, str]] = {}
    volumeMounts: list[_Mount] = []


class _Volume(_Strict):
    name: str
    persistentVolumeClaim: dict[str, str | bool]


class _PodSpec(_Strict):
    containers: list[_Container] = Field(min_length=1)
    volumes: list[_Volume] = []
    tolerations: list[dict[str, str]] = []


class _Template(_Strict):
    spec: _PodSpec


class _Head(_Strict):
    rayStartParams: dict[str, str]  # KubeRay's map[string]string: `num-cpus: 0` (an int) is rejected
    template: _Template


class _Workers(_Head):
    groupName: str
    replicas: int = Field(ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)


class _ClusterSpec(_Strict):
    rayVersion: str
    headGroupSpec: _Head
    workerGroupSpecs: list[_Workers] = Field(min_length=1)


class _JobSpec(_Strict):
    entrypoint: str
    runtimeEnvYAML: str
    shutdownAfterJobFinishes: bool
    ttlSecondsAfterFinished: int = Field(ge=0)
    rayClusterSpec: _ClusterSpec


class RayJob(_Strict):
    """The fields of KubeRay's ``ray.io/v1`` RayJob CRD this recipe uses, with the CRD's types;
    any other key (a typo, a field of another version) is an error, offline."""

    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayJob"]
    metadata: dict[str, str]
    spec: _JobSpec


def test_kuberay_rayjob_recipe_fits_the_crd_and_every_pod_reaches_its_data():
    job = RayJob.model_validate(yaml.safe_load((RECIPES / "rayjob-gpu.yaml").read_text()))
    argv = shlex.split(job.spec.entrypoint)
    assert argv[:2] == ["labelcurve", "run"] and "pretrain.use_gpu=true" in argv
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(job.spec.runtimeEnvYAML)["env_vars"]
    cluster = job.spec.rayClusterSpec
    # the operator's submitter pod calls the head's dashboard through its Service: 127.0.0.1 would refuse it
    assert cluster.headGroupSpec.rayStartParams["dashboard-host"] == "0.0.0.0"
    (workers,) = cluster.workerGroupSpecs
    assert workers.template.spec.containers[0].resources["limits"]["nvidia.com/gpu"] == "1"
    # the study's config is valid with the recipe's overrides, and its data lies on a volume every pod mounts
    cfg = load_config(REPO / argv[2], argv[3:])
    assert cfg.pretrain.storage_path.startswith("s3://")
    for pod in (cluster.headGroupSpec.template.spec, workers.template.spec):
        claims = {v.name for v in pod.volumes if v.persistentVolumeClaim}
        mounts = [m.mountPath for c in pod.containers for m in c.volumeMounts if m.name in claims]
        for path in (cfg.data.path, cfg.data.unlabeled_path):
            assert any(path.startswith(mount.rstrip("/") + "/") for mount in mounts), (path, mounts)
