"""Connecting to Ray: in-process by default, or an existing cluster by address."""

from __future__ import annotations

import logging

import ray

# Workers start fresh interpreters: keep library deprecation chatter out of the user's console.
_QUIET_WORKERS = {"env_vars": {"PYTHONWARNINGS": "ignore"}}


class RayConnectError(RuntimeError):
    """Ray cannot be reached, phrased as one line for the user."""


def connect(address: str | None) -> None:
    """``ray.init()`` in-process when ``address`` is None, else join the cluster at ``address``."""
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.ERROR, runtime_env=_QUIET_WORKERS)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayConnectError(
            f"cannot connect to Ray at {address}: {str(error).splitlines()[0]} "
            "(start it with `ray start --head` or drop --address to run in-process)"
        ) from None
