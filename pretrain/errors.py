"""Errors that the control plane reports as one line, importable without the training stack.

Every error a user can fix (bad input, an unreachable service, a cluster too small) derives from
:class:`LabelcurveError`, so the CLI maps all of them to one line and exit code 2 by importing
this module alone, not torch or MLflow.
"""


class LabelcurveError(Exception):
    """A problem the user can fix, phrased as one line that names it and the fix."""


class ResourceError(LabelcurveError, ValueError):
    """The cluster cannot place the requested worker group."""
