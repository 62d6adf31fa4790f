"""The in-process Ray: what a failed start says, and which addresses its processes listen on."""

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import ray_runtime
from cluster.ray_runtime import RayConnectError

ROOT = Path(__file__).resolve().parent.parent


def test_a_local_ray_that_fails_to_start_says_so_and_how_to_fix_it(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to start the GCS server. Check /tmp/ray/session_latest/logs\nmore detail")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(RayConnectError) as error:
        ray_runtime.connect(None)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("could not start Ray in this process: Failed to start the GCS server.")
    assert "None" not in message
    assert "RAY_TMPDIR" in message and "--address" in message


LISTENERS = """
import json, psutil
from cluster.ray_runtime import connect
connect(None)
me = psutil.Process()
tree = {p.pid: p.name() for p in [me, *me.children(recursive=True)]}
found = [
    {"name": tree[c.pid], "ip": c.laddr.ip, "port": c.laddr.port}
    for c in psutil.net_connections(kind="tcp")
    if c.status == psutil.CONN_LISTEN and c.pid in tree
]
print(json.dumps(found))
"""


@pytest.mark.slow
def test_the_in_process_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", LISTENERS], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    names = {entry["name"] for entry in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the walk sees Ray's own processes
    assert exposed(listening) == [], listening


TRAINING_LISTENERS = """
import json, os, sys, psutil
from cluster.ray_runtime import connect
connect(None)
import ray.train, torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def loop(config):
    driver = psutil.Process(config["driver"])
    tree = {p.pid: p.name() for p in [driver, *driver.children(recursive=True)]}
    found = [
        {"name": tree[c.pid], "ip": c.laddr.ip, "port": c.laddr.port, "mine": c.pid == os.getpid()}
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in tree
    ]
    store = dist.distributed_c10d._get_default_store()
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    with open(config["out"], "w") as out:
        json.dump({"listening": found, "store_port": store.port}, out)

TorchTrainer(
    loop,
    train_loop_config={"driver": os.getpid(), "out": os.path.abspath("listening.json")},
    scaling_config=ScalingConfig(num_workers=1),
    run_config=RunConfig(name="loopback", storage_path=os.path.abspath("runs")),
).fit()
"""


@pytest.mark.slow
def test_pretraining_exposes_only_the_torch_rendezvous_store(tmp_path):
    """Ray Train sets up torch.distributed on every run; torch's TCPStore (on the rank-0 worker)
    binds all interfaces and has no setting for it: the one known exception, named in the README."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", TRAINING_LISTENERS], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads((tmp_path / "listening.json").read_text())
    assert {"gcs_server", "raylet"} <= {entry["name"] for entry in seen["listening"]}
    assert [(e["mine"], e["port"]) for e in exposed(seen["listening"])] == [(True, seen["store_port"])], seen


def exposed(listening: list[dict]) -> list[dict]:
    """The sockets reachable from another machine: neither 127.0.0.0/8 nor ::1 (nor ::ffff:127.x)."""

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    return [entry for entry in listening if not loopback(entry["ip"])]


def test_the_exposure_check_reads_every_form_of_address():
    sockets = [{"ip": ip} for ip in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "10.0.0.5")]
    assert [entry["ip"] for entry in exposed(sockets)] == ["0.0.0.0", "::", "10.0.0.5"]
