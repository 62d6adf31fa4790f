"""Connecting to Ray: in-process by default, or an existing cluster by address."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from pretrain.errors import LabelcurveError

# Workers start fresh interpreters: keep library deprecation chatter out of the user's console.
# Ray Data logs every epoch's execution plan at INFO; our own progress line per epoch says enough.
_QUIET_WORKERS = {"PYTHONWARNINGS": "ignore", "RAY_DATA_LOG_LEVEL": "WARNING"}


TOKEN_HELP = (
    "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, printed by `ray get-auth-token` on its head"
)


def _own_instance() -> dict:
    """``ray.init`` arguments of an in-process instance that keeps to itself on a shared machine.

    Ray Train's placement-group cleaner asks the state API for its controller without an address,
    so it would find another Ray instance of this machine (or fail with "Found multiple active Ray
    instances" and a traceback): our dashboard gets a port we pick, and every worker is told it.
    A node of an in-process instance cannot be preempted, so Ray Train's preemption watcher (whose
    start logs an error line about its constructor arguments) is off. On a small machine Ray would
    stop idle worker processes beyond one per CPU, and Ray Data's decode and augment tasks would
    re-import torch every epoch."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # Ray Train passes it on to its controller
    return {
        "dashboard_port": port,
        "runtime_env": {"env_vars": {**_QUIET_WORKERS, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
        "_system_config": {"num_workers_soft_limit": 4 * (os.cpu_count() or 1) + 4},
    }


class RayConnectError(LabelcurveError, RuntimeError):
    """Ray cannot be reached, phrased as one line for the user."""


def use_token_if_available() -> None:
    """Ray 2.60 clusters require a token by default, and Ray reads ``RAY_AUTH_MODE`` when it is
    first imported: call this before ``import ray`` to send the token where one is available."""
    token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token or Path("~/.ray/auth_token").expanduser().is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail within seconds, before compute, when a ``host:port`` Ray address does not answer."""
    if not address or address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectError(f"Ray address '{address}' is not HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayConnectError(
            f"Ray at {address} is not reachable ({error.strerror or error}): start it with "
            "`ray start --head` or drop --address to run Ray in-process"
        ) from None


def connect(address: str | None) -> None:
    """``ray.init()`` in-process when ``address`` is None, else join the cluster at ``address``."""
    check_ray_address(address)
    if address:
        use_token_if_available()
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    if not sys.stdout.isatty():  # a log file or a pipe: worker lines without colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        starts_one = not address and not os.environ.get("RAY_ADDRESS")  # a job's driver joins its cluster
        # "local": a new instance of our own, never another one running on this machine (ray.init()
        # without an address would join the latest `ray start` cluster it finds)
        target = "local" if starts_one else address
        joins = {"runtime_env": {"env_vars": _QUIET_WORKERS}}
        ray.init(address=target, logging_level=logging.ERROR, **(_own_instance() if starts_one else joins))
    except AuthenticationError:
        raise RayConnectError(f"Ray at {address} refused the token (missing or wrong): {TOKEN_HELP}") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayConnectError(
            f"cannot connect to Ray at {address}: {str(error).splitlines()[0]} "
            "(start it with `ray start --head` or drop --address to run in-process)"
        ) from None
