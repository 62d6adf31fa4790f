"""A real two-node Ray cluster on loopback and an MLflow server, started and stopped by the tests.

Studies go in through the Jobs API with token authentication (on by default in Ray 2.60);
pretraining must spread over both nodes, runs and artifacts must land in the server's store,
and a training worker killed mid-run must cost a restart from the last checkpoint, not the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TINY = [
    "pretrain.input=stream",  # on a cluster the views come from Ray Data tasks on any node
    "pretrain.resources_per_worker={CPU: 1.5}",
    "pretrain.epochs=2",
    "pretrain.batch_size=64",
    "finetune.budgets=[1, 2]",
    "finetune.seeds=[0]",
    "finetune.steps=10",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (2 CPUs, dashboard + Jobs API) + worker node (2 CPUs) + MLflow server, all on 127.0.0.1.

    Each Ray Train worker asks for 1.5 CPUs (``TINY``), so one fits per node and the group must
    span both; the rest of each node runs the Ray Data tasks that decode and augment."""
    root = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    # Nodes of 2 CPUs would stop idle worker processes beyond 2, and Ray Data's decode tasks would
    # re-import torch for every block; nodes of real clusters have the CPUs to keep them.
    env["RAY_num_workers_soft_limit"] = "12"
    env.pop("MLFLOW_TRACKING_URI", None)
    ray = str(BIN / "ray")
    gcs, dashboard, mlflow_port = free_port(), free_port(), free_port()
    server, nodes = None, []
    try:
        subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        head = ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
        nodes.append(start_node(env, root / "head.log", *head, "--disable-usage-stats"))
        wait_for(f"http://127.0.0.1:{dashboard}/api/version", seconds=120, process=nodes[0])
        nodes.append(start_node(env, root / "worker.log", "--address", f"127.0.0.1:{gcs}"))
        wait_for_nodes(env, f"127.0.0.1:{gcs}", 2, nodes)
        server = subprocess.Popen(
            [
                str(BIN / "labelcurve"),
                "server",
                "--port",
                str(mlflow_port),
                "--backend-store-uri",
                f"sqlite:///{root / 'server.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        address, tracking = f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{mlflow_port}"
        wait_for(f"{tracking}/health", seconds=240)  # 4 server workers import MLflow beside 2 Ray nodes
        wait_for(f"{address}/api/version")
        yield {
            "address": address,
            "gcs": f"127.0.0.1:{gcs}",
            "tracking": tracking,
            "root": root,
            "env": {**env, "MLFLOW_TRACKING_URI": tracking},
        }
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        for node in reversed(nodes):  # only this cluster's nodes: other Ray instances of the machine live on
            stop_node(node)


def start_node(env: dict, log: Path, *args: str) -> subprocess.Popen:
    """A node whose processes live as long as this `ray start --block`: stopping it stops them."""
    command = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_nodes(env: dict, gcs: str, count: int, nodes: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        status = subprocess.run([str(BIN / "ray"), "status", "--address", gcs], env=env, capture_output=True, text=True)
        active = status.stdout.split("Active:")[-1].split("Pending:")[0]
        if active.count(" node_") >= count:
            return
        assert all(node.poll() is None for node in nodes), "a Ray node exited while starting"
        assert time.monotonic() < deadline, f"{count} Ray nodes did not join within {seconds} s: {status.stdout}"
        time.sleep(1)


def stop_node(node: subprocess.Popen) -> None:
    """SIGTERM: `ray start --block` shuts down the processes it started; SIGKILL if it hangs."""
    os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


def cli(cluster, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    environment = {**cluster["env"], **(env or {})}
    return subprocess.run(
        [str(BIN / "labelcurve"), *args],
        cwd=cluster["root"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(cluster, study: str, *overrides: str) -> str:
    storage = f"pretrain.storage_path={cluster['root'] / 'ray-storage'}"
    done = cli(cluster, "job", "submit", f"study={study}", storage, *overrides, "--address", cluster["address"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labelcurve job logs" in done.stdout and "--follow" in done.stdout
    return done.stdout.split("submitted job ")[1].split()[0]


def runs(cluster, study: str) -> dict[str, list]:
    client = MlflowClient(cluster["tracking"])
    experiment = client.get_experiment_by_name(study)
    roles: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        roles.setdefault(run.data.tags.get("labelcurve.role"), []).append(run)
    return roles


def test_submitted_study_spreads_over_both_nodes_and_lands_in_the_server(cluster):
    job = submit(cluster, "jobs", *TINY)
    followed = cli(cluster, "job", "logs", job, "--follow", "--address", cluster["address"])
    assert followed.returncode == 0, followed.stdout[-3000:]
    assert "pretrain epoch 2/2" in followed.stdout and "labels/class" in followed.stdout
    status = cli(cluster, "job", "status", job, "--address", cluster["address"])
    assert status.returncode == 0 and f"{job}: SUCCEEDED" in status.stdout
    listing = cli(cluster, "job", "list", "--address", cluster["address"])
    assert job in listing.stdout and "study=jobs" in listing.stdout

    roles = runs(cluster, "jobs")
    (pre,) = roles["pretrain"]
    assert pre.info.status == "FINISHED"
    assert pre.data.tags["labelcurve.num_nodes"] == "2"
    assert len(pre.data.tags["labelcurve.worker_nodes"].split("; ")) == 2
    assert len(roles["finetune"]) == 3 * 2 and roles["study"][0].info.status == "FINISHED"
    # Artifacts went through the server into its artifact store, none into a worker's temp dir.
    assert pre.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = {p.name for p in (cluster["root"] / "artifacts").rglob("*") if p.is_file()}
    assert {"model.safetensors", "card.json", "curve.png", "results.csv"} <= stored


def test_killed_training_worker_costs_a_restart_not_the_study(cluster):
    job = submit(
        cluster,
        "killed",
        "pretrain.epochs=6",
        "pretrain.resources_per_worker={CPU: 1.5}",
        "pretrain.checkpoint_every=1",
        "pretrain.batch_size=64",
        "finetune.arms=[ssl-linear]",
        "finetune.budgets=[1]",
        "finetune.seeds=[0]",
    )
    client = MlflowClient(cluster["tracking"])
    deadline, killed = time.monotonic() + 300, None
    while time.monotonic() < deadline and killed is None:
        time.sleep(1)
        experiment = client.get_experiment_by_name("killed")
        pre = (
            [
                r
                for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("labelcurve.role") == "pretrain"
            ]
            if experiment
            else []
        )
        if pre and len(client.get_metric_history(pre[0].info.run_id, "train/loss")) >= 2:
            workers = subprocess.run(
                ["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True
            ).stdout.split()
            assert len(workers) == 2, workers
            killed = int(workers[-1])
            os.kill(killed, signal.SIGKILL)
    assert killed is not None, "pretraining never reached epoch 2"
    followed = cli(cluster, "job", "logs", job, "--follow", "--address", cluster["address"])
    assert followed.returncode == 0, followed.stdout[-3000:]
    assert "RETRY" in followed.stdout  # Ray Train's failure policy restarted the worker group
    (pre,) = runs(cluster, "killed")["pretrain"]  # exactly one pretraining run, finished
    assert pre.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(pre.info.run_id, "train/loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6]
    # resumed from the last checkpoint, not from epoch 0: the first epoch ran (and was logged) once
    assert steps.count(1) == 1, steps


def test_bad_cluster_addresses_and_tokens_fail_fast(cluster, tmp_path):
    started = time.monotonic()
    unreachable = cli(cluster, "job", "submit", f"pretrain.storage_path={tmp_path}", "--address", "http://127.0.0.1:9")
    assert time.monotonic() - started < 20
    assert unreachable.returncode == 2 and "Ray Jobs API at http://127.0.0.1:9 is not reachable" in unreachable.stderr
    wrong = cli(cluster, "job", "list", "--address", cluster["address"], env={"RAY_AUTH_TOKEN": "wrong"})
    assert wrong.returncode == 2
    assert "refused the token" in wrong.stderr and "ray get-auth-token" in wrong.stderr
    relative = cli(cluster, "job", "submit", "pretrain.storage_path=runs", "--address", cluster["address"])
    assert relative.returncode == 2 and "is relative: a job needs a path every node can reach" in relative.stderr


def test_an_embedded_ray_starts_its_own_instance_beside_a_running_cluster(cluster, tmp_path):
    """`labelcurve run` without --address must not join a `ray start` cluster of the same machine."""
    code = (
        "import ray; from cluster.ray_runtime import connect; connect(None); "
        "print(ray.get_runtime_context().gcs_address); ray.shutdown()"
    )
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_ADDRESS"}
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    own = ran.stdout.strip().splitlines()[-1]
    assert own and own != cluster["gcs"], (own, cluster["gcs"])


def test_a_study_on_an_embedded_ray_beside_a_cluster_runs_with_quiet_logs(cluster, tmp_path):
    """Ray Train's placement-group cleaner asks the state API for its controller; without an address
    it would ask the `ray start` cluster of this machine (or fail on finding two). Output to a file
    carries no colour codes and no error lines from Ray's internals."""
    env = {k: v for k, v in cluster["env"].items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    overrides = ["pretrain.epochs=3", "pretrain.batch_size=64", "finetune.arms=[ssl-linear]"]
    overrides += ["finetune.budgets=[1]", "finetune.seeds=[0]", "finetune.steps=10"]
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        done = subprocess.run(
            [str(BIN / "labelcurve"), "run", "study=beside", *overrides],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    output = log.read_text()
    assert done.returncode == 0, output[-3000:]
    assert "pretrain epoch 3/3" in output and "labels/class" in output
    assert "\x1b[" not in output  # the table and Ray's worker prefixes, plain in a file
    for noise in ("Found multiple active Ray instances", "PreemptionWatcher", "Traceback", "RETRY"):
        assert noise not in output, output[-3000:]
