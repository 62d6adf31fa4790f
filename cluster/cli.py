"""The ``labelcurve`` command line (Click, in the style of Ray's and MLflow's CLIs)."""

from __future__ import annotations

import os
import sys

import click

from cluster.config import ConfigError, load_config
from cluster.ray_runtime import RayConnectError
from cluster.tracking import TrackingError, tracking_uri
from finetune.budgets import BudgetError
from finetune.curves import CurveError
from pretrain.data import DataError

USER_ERRORS = (ConfigError, DataError, BudgetError, TrackingError, RayConnectError, CurveError)


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit code 2, nothing computed."""

    exit_code = 2


def _split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first argument is a config file unless it has a '='."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labelcurve")
def main() -> None:
    """labelcurve: how many labels does a vision task need, and how many does
    self-supervised pretraining save?"""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray in-process).")
def run(args: tuple[str, ...], address: str | None) -> None:
    """Run (or resume) a study: pretrain, fine-tune on label budgets, report the curve.

    CONFIG defaults to configs/quickstart.yaml; KEY=VALUE overrides any config key, e.g.
    `labelcurve run pretrain.epochs=20 finetune.seeds=[0,1]`.
    """
    path, overrides = _split_args(args)
    if address:
        overrides.append(f"ray.address={address}")
    try:
        cfg = load_config(path, overrides)
        from cluster.study import run_study  # heavy imports only once the input is known to be good

        run_study(cfg)
    except USER_ERRORS as error:
        raise UserError(str(error)) from None


def _answer(function, *args) -> None:
    from cluster.console import make_console

    try:
        function(*args, make_console())
    except USER_ERRORS as error:
        raise UserError(str(error)) from None


STUDY = click.option("--study", default="quickstart", show_default=True, help="Study name (the MLflow experiment).")
TARGET = click.option(
    "--target",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    required=True,
    help="Target test accuracy, e.g. 0.9.",
)


@main.command()
@TARGET
@STUDY
def predict(target: float, study: str) -> None:
    """Labels needed for a target accuracy per arm, and how many labels pretraining saves."""
    from cluster.answers import predict as answer

    _answer(answer, study, target)


@main.command()
@STUDY
@click.option(
    "--cut",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Fit on budgets up to this share of the labeled pool.",
)
@click.option("--cut-labels", type=click.IntRange(1), default=None, help="Fit on budgets up to this many labels.")
def backtest(study: str, cut: float, cut_labels: int | None) -> None:
    """Score the curve fit on small budgets against the larger budgets that were measured."""
    from cluster.answers import run_backtest

    _answer(run_backtest, study, cut, cut_labels)


@main.command()
@TARGET
@STUDY
@click.option(
    "--quantile",
    default=0.75,
    show_default=True,
    type=click.FloatRange(0.5, 0.99),
    help="Label enough to reach the target with this probability under the fit.",
)
@click.option(
    "--cost-per-label", type=click.FloatRange(0), default=None, help="Price of one label (adds a cost column)."
)
def plan(target: float, study: str, quantile: float, cost_per_label: float | None) -> None:
    """Recommend the next budget to label toward a target accuracy (one round)."""
    from cluster.answers import plan as answer

    _answer(answer, study, target, quantile, cost_per_label)


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind; keep loopback unless you mean it."
)
@click.option("--port", default=5000, show_default=True, type=int)
def ui(host: str, port: int) -> None:
    """Open the MLflow UI on the study store (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        click.echo(f"The tracking server already serves the UI: open {uri}")
        return
    click.echo(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl+C to stop)")
    # MLflow's server-side job runner (GenAI jobs) starts a dozen worker processes labelcurve never uses.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    os.execve(sys.executable, command, env)  # signals (Ctrl+C, SIGTERM) reach the server itself
