"""A CPU pretraining worker reserves the CPUs it computes on and runs torch on that many threads.

Ray sets a worker's ``OMP_NUM_THREADS`` from its CPU reservation: a local worker that reserved one
CPU of a 2-core machine trained on one thread while the other core sat idle (0.63x bare lightly
in ``benchmarks/vs_lightly.py``). These tests check the reservation and the threads torch really
had inside the Ray Train worker, not a timing.
"""

from __future__ import annotations

import logging

import pytest
import ray

from cluster.config import DataConfig, PretrainConfig
from pretrain.data import load_data, plan_data
from pretrain.train import local_worker_cpus, pretrain, worker_resources
from tests.conftest import write_image_folder


def test_local_workers_share_the_cpus_of_the_nodes_they_fit_on():
    assert local_worker_cpus(1, [2]) == 2  # one worker on this 2-core machine: both cores
    assert local_worker_cpus(2, [2]) == 1
    assert local_worker_cpus(3, [2]) == 1  # more workers than CPUs: check_resources refuses them
    assert local_worker_cpus(3, [8]) == 2
    assert local_worker_cpus(3, [4, 4]) == 2  # 2 + 2 on one node, 2 on the other
    assert local_worker_cpus(3, [3, 3]) == 1  # 2 CPUs each would leave the third worker no node
    assert local_worker_cpus(2, [16, 0]) == 8  # a head node without CPUs takes no worker
    assert local_worker_cpus(1, []) == 1


def test_what_each_kind_of_worker_reserves():
    settings = PretrainConfig(num_workers=1).model_dump()
    assert worker_resources(settings, "local", [2]) == {"CPU": 2}
    assert worker_resources(settings, "stream", [2]) == {"CPU": settings["augment_cpus"]}  # tasks make the views
    assert worker_resources({**settings, "resources_per_worker": {"CPU": 1}}, "local", [2]) == {"CPU": 1}


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "per_worker", "threads"), [(1, None, 2), (2, None, 1), (1, {"CPU": 1}, 1)])
def test_torch_in_a_cpu_worker_runs_on_the_cpus_it_reserved(workers, per_worker, threads, tmp_path, caplog):
    write_image_folder(tmp_path / "images", {"a": 40, "b": 40})  # 12 test images each
    data = load_data(plan_data(DataConfig(name="folder", path=str(tmp_path / "images"))))
    settings = PretrainConfig(
        epochs=1,
        batch_size=8,
        num_workers=workers,
        resources_per_worker=per_worker,
        online_knn=0,
        input="local",
        storage_path=str(tmp_path / "runs"),
    ).model_dump()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with caplog.at_level(logging.INFO, logger="labelcurve.pretrain"):
            result = pretrain(settings, data, name=f"threads-{workers}")
    finally:
        ray.shutdown()
    assert result.threads == threads  # torch.get_num_threads() inside the Ray Train worker
    cpus = (per_worker or {}).get("CPU", threads)
    assert f"{workers} worker{'s' if workers > 1 else ''} x {cpus:g} CPU" in caplog.text
