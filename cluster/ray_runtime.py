"""Connecting to Ray: in-process by default, or an existing cluster by address."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pretrain.errors import LabelcurveError

# Workers start fresh interpreters: keep library deprecation chatter out of the user's console.
# Ray Data logs every epoch's execution plan at INFO; our own progress line per epoch says enough.
_QUIET_WORKERS = {"PYTHONWARNINGS": "ignore", "RAY_DATA_LOG_LEVEL": "WARNING"}


#: the node IP of an in-process Ray: its processes listen on loopback only
LOOPBACK = "127.0.0.1"

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
        "_node_ip_address": LOOPBACK,  # see _loopback_node: every Ray process of the instance listens on it only
        "dashboard_port": port,
        "runtime_env": {"env_vars": {**_QUIET_WORKERS, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
        "_system_config": {"num_workers_soft_limit": 4 * (os.cpu_count() or 1) + 4},
    }


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While an in-process Ray starts, its node IP is loopback, so none of its processes listens on the network.

    In the installed Ray (2.60), ``ray.init(_node_ip_address="127.0.0.1")`` is turned into this
    machine's network address by ``services.resolve_ip_for_localhost``, unless
    ``ray_constants.ENABLE_RAY_CLUSTER`` is off (as on macOS and Windows, from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` read when Ray is imported); with the node IP at 127.0.0.1
    the GCS, the raylet, the core workers' gRPC servers and the dashboard and runtime-env agents
    listen on 127.0.0.1 instead of ``0.0.0.0``. The switch is put back once the node runs (the
    driver then takes its IP from the node), so a later ``ray.init`` of this process that joins a
    cluster announces its real address; the environment variable is never set, as it would stop a
    ``ray start --address`` launched from this process."""
    from ray._private import ray_constants

    was = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was


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
        if starts_one:
            with _loopback_node():
                ray.init(address="local", logging_level=logging.ERROR, **_own_instance())
        else:
            ray.init(address=address, logging_level=logging.ERROR, runtime_env={"env_vars": _QUIET_WORKERS})
    except AuthenticationError:
        raise RayConnectError(f"Ray at {address} refused the token (missing or wrong): {TOKEN_HELP}") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if starts_one:
            raise RayConnectError(
                f"could not start Ray in this process: {first} (check free disk and shared memory: Ray keeps its "
                "session and logs under /tmp/ray, RAY_TMPDIR=DIR moves them; or pass --address HOST:PORT to use a "
                "running cluster)"
            ) from None
        target = address or os.environ.get("RAY_ADDRESS")
        raise RayConnectError(
            f"cannot connect to Ray at {target}: {first} "
            "(start it with `ray start --head` or drop --address to run in-process)"
        ) from None
