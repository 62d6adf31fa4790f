"""The scale-out recipes parse and say what they must: GPU workers, loopback dashboards, labelcurve."""

from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "cluster" / "recipes"


def test_cluster_launcher_recipe():
    recipe = yaml.safe_load((RECIPES / "ray-cluster-gpu.yaml").read_text())
    gpu = recipe["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] >= gpu["min_workers"] >= 1
    assert recipe["head_node_type"] in recipe["available_node_types"]
    assert any("labelcurve" in command for command in recipe["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in command for command in recipe["head_start_ray_commands"])


def test_kuberay_rayjob_recipe():
    job = yaml.safe_load((RECIPES / "rayjob-gpu.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert (
        job["spec"]["entrypoint"].startswith("labelcurve run ") and "pretrain.use_gpu=true" in job["spec"]["entrypoint"]
    )
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
