"""Errors of the pretraining workload that the control plane reports as one line, importable
without the heavy training stack (the CLI imports this to map them)."""


class ResourceError(ValueError):
    """The cluster cannot place the requested worker group, phrased as one line for the user."""
