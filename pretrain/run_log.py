"""Metrics a Ray Train worker sends to its pretraining run: a tracking server outage costs them
nothing and stalls no training.

A worker on a remote node does not inherit the driver's environment, so MLflow's own HTTP
retries (7 retries, backoff up to 120 s: minutes per call) would hold every epoch while the
server is away, then raise and make Ray Train restart the worker group. Here a background
thread sends the metrics, each request is bounded (:data:`HTTP_BOUNDS`), metrics that could not
be sent are kept and tried again every few seconds, and a warning says so once.

    run_log = RunLog("http://127.0.0.1:5000", run_id)
    run_log.log({"train/loss": 4.2}, step=1)  # returns at once; sent in the background
    run_log.flush()  # at the end: True once everything is recorded
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# MLflow reads these per request; values already set win.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


BATCH = 1000


def bound_http_retries() -> None:
    """Cut MLflow's HTTP retries to seconds in this process, unless they are set."""
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)


def unreachable(error: BaseException) -> bool:
    """A request that got no answer (refused, timed out, retries used up), not an error reply."""
    from requests.exceptions import RequestException

    return isinstance(error, RequestException) or isinstance(error.__cause__ or error.__context__, RequestException)


class RunLog:
    """Metrics of one MLflow run, sent in batches by a background thread: training never waits on
    the server, and what an outage held back is sent when it answers again."""

    def __init__(self, uri: str, run_id: str, say: Callable[[str], None] = log.warning, retry_s: float = 10.0) -> None:
        bound_http_retries()
        from mlflow import MlflowClient

        self.client, self.run_id, self.say, self.uri, self.retry_s = MlflowClient(uri), run_id, say, uri, retry_s
        self.pending: list = []
        self.warned = False
        self._lock, self._sending, self._wake = threading.Lock(), threading.Lock(), threading.Event()
        threading.Thread(target=self._send_loop, name="labelcurve-run-log", daemon=True).start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self.pending += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._wake.set()

    def flush(self) -> bool:
        """Send what is pending now; False (and the metrics kept) while the server does not answer."""
        with self._sending:
            sent = 0
            while batch := self._next_batch():
                if not self._send(batch):
                    return False
                sent += len(batch)
            if self.warned:
                self.say(f"tracking server {self.uri} answers again: {sent} kept metrics sent")
                self.warned = False
            return True

    def _next_batch(self) -> list:
        with self._lock:
            return self.pending[:BATCH]  # MLflow takes at most 1000 metrics per request

    def _send(self, batch: list) -> bool:
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except (MlflowException, RequestException, OSError) as error:
            first = str(error).splitlines()[0][:200]
            if not unreachable(error):  # an error reply (no credentials, run deleted): no retry will help
                self.say(f"tracking server {self.uri} refused {len(batch)} metrics ({first}): dropped")
                with self._lock:
                    del self.pending[: len(batch)]
                return True
            if not self.warned:
                self.say(f"tracking server {self.uri} did not answer ({first}): metrics kept, sent when it is back")
                self.warned = True
            return False
        with self._lock:
            del self.pending[: len(batch)]
        return True

    def _send_loop(self) -> None:
        while True:
            self._wake.wait(self.retry_s)
            self._wake.clear()
            self.flush()
