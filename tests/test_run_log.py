"""A pretraining worker's metrics survive a tracking server outage, against a real ``mlflow server``."""

from __future__ import annotations

import time

from mlflow import MlflowClient

from pretrain.run_log import RunLog
from tests.conftest import free_port, mlflow_server


def test_metrics_logged_while_the_server_is_away_are_sent_when_it_is_back(tmp_path):
    port, said = free_port(), []
    with mlflow_server(tmp_path, port) as url:
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        run_log = RunLog(url, run_id, say=said.append)
        run_log.log({"train/loss": 6.0}, step=1)
        assert run_log.flush() and run_log.pending == []
    # The server is killed: training does not wait, two epochs' metrics are kept, one warning.
    started = time.monotonic()
    run_log.log({"train/loss": 5.0, "train/images_per_second": 300.0}, step=2)
    run_log.log({"train/loss": 4.0}, step=3)
    assert time.monotonic() - started < 1
    started = time.monotonic()
    assert not run_log.flush() and len(run_log.pending) == 3
    assert time.monotonic() - started < 40  # bounded requests (the background one too); MLflow's default: minutes
    (warning,) = said
    assert warning.startswith(f"tracking server {url} did not answer (")
    assert warning.endswith("): metrics kept, sent when it is back")

    with mlflow_server(tmp_path, port) as url:  # back, on the same store
        run_log.log({"train/loss": 3.0}, step=4)
        assert run_log.flush() and run_log.pending == []
        (back,) = said[1:]  # sent by the background thread or by flush, whichever came first
        assert back.startswith(f"tracking server {url} answers again: ") and back.endswith(" kept metrics sent")
        history = MlflowClient(url).get_metric_history(run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 6.0), (2, 5.0), (3, 4.0), (4, 3.0)]
        (rate,) = MlflowClient(url).get_metric_history(run_id, "train/images_per_second")
        assert (rate.step, rate.value) == (2, 300.0)
