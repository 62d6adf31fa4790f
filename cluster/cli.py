"""The ``labelcurve`` command line (Click, in the style of Ray's and MLflow's CLIs)."""

from __future__ import annotations

import os
import secrets
import sys
from contextlib import nullcontext

import click

from cluster.config import load_config
from cluster.console import make_console
from cluster.ray_runtime import use_token_if_available
from cluster.supervise import run_supervised, supervised
from cluster.tracking_server import (
    TrackingError,
    check_lookup,
    check_tracking_server,
    redacted,
    runs_url,
    store_exists,
    tracking_uri,
)
from pretrain.errors import LabelcurveError


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit code 2, nothing computed."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(redacted(message))  # errors quote paths and URIs: never their credentials


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
    # Backbones are two small files: a download progress bar is noise between our own lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we print run ids and the UI link


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
        if (cfg.finetune.init or "").startswith("models:/"):  # said before a driver process is started
            check_lookup(tracking_uri(), model=cfg.finetune.init)
        if not supervised():  # a driver that dies without a word still gets its resume line
            sys.exit(run_supervised(["run", *args, *(["--address", address] if address else [])]))
        if cfg.ray.address:
            use_token_if_available()  # before Ray is first imported
        console = make_console()
        held = nullcontext()
        if store_exists(tracking_uri()):  # MLflow only for a store that is there: bad input stays fast
            from cluster.lease import existing_study_lease  # a second driver is refused before data is read

            held = existing_study_lease(tracking_uri(), cfg.study, console.print)
        with held:
            from cluster.prepare import prepare_study  # pandas, pyarrow: not for --help and config errors

            prepared = prepare_study(cfg, console)
            from cluster.study import run_study  # torch, Ray, MLflow: only once the input is known to be good

            run_study(cfg, console, prepared)
    except LabelcurveError as error:
        raise UserError(str(error)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: finished runs are recorded; run the same command again to resume", err=True)
        sys.exit(130)


JOBS_ADDRESS = click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="Ray Jobs API of the cluster, e.g. http://127.0.0.1:8265 (env: RAY_API_SERVER_ADDRESS).",
)


def _jobs(address: str):
    from cluster.jobs import client

    try:
        return client(address)
    except LabelcurveError as error:
        raise UserError(str(error)) from None


@main.group()
def job() -> None:
    """Studies as Ray jobs on a cluster: submit, list, status, logs, stop.

    \b
    Example:
      export RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265
      labelcurve job submit configs/cifar10-cpu.yaml
      labelcurve job logs raysubmit_XYZ --follow
    """


@job.command("submit", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@JOBS_ADDRESS
def submit(args: tuple[str, ...], address: str) -> None:
    """Submit a study to a Ray cluster as a job (config and MLFLOW_TRACKING_URI travel with it)."""
    from cluster.jobs import submit as submit_job

    path, overrides = _split_args(args)
    try:
        cfg = load_config(path, overrides)
        uri = tracking_uri()
        check_tracking_server(uri)
        job_id = submit_job(address, cfg, uri)
    except LabelcurveError as error:
        raise UserError(str(error)) from None
    if not uri.startswith(("http://", "https://")):
        click.echo(
            f"note: runs go to {uri}, which only a cluster on this machine can reach; "
            "for a real cluster start `labelcurve server` and set MLFLOW_TRACKING_URI"
        )
    click.echo(f"submitted job {job_id} (study '{cfg.study}', tracking {redacted(uri)})")
    click.echo(f"  follow: labelcurve job logs {job_id} --follow --address {address}")
    click.echo(f"  status: labelcurve job status {job_id} --address {address}")
    click.echo(f"  stop:   labelcurve job stop {job_id} --address {address}")


@job.command("list")
@JOBS_ADDRESS
def list_jobs(address: str) -> None:
    """List the jobs of a Ray cluster, newest last."""
    rows = sorted(_jobs(address).list_jobs(), key=lambda job: job.start_time or 0)
    for job in rows:
        study = (job.metadata or {}).get("labelcurve.study", "-")
        click.echo(f"{job.submission_id}  {job.status.value:<9}  study={study}  {job.entrypoint}")


@job.command()
@click.argument("job_id")
@JOBS_ADDRESS
def status(job_id: str, address: str) -> None:
    """The status of one job; exits non-zero if it failed or was stopped."""
    info = _jobs(address).get_job_info(job_id)
    click.echo(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    if info.status.value in ("FAILED", "STOPPED"):
        sys.exit(1)


@job.command()
@click.argument("job_id")
@JOBS_ADDRESS
@click.option("--follow", "-f", is_flag=True, help="Stream the logs until the job ends.")
def logs(job_id: str, address: str, follow: bool) -> None:
    """The logs of one job; with --follow, stream them and exit with the job's outcome."""
    import asyncio

    client = _jobs(address)
    if not follow:
        click.echo(client.get_job_logs(job_id), nl=False)
        return

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            click.echo(lines, nl=False)

    asyncio.run(stream())
    if client.get_job_status(job_id).value != "SUCCEEDED":
        sys.exit(1)


@job.command()
@click.argument("job_id")
@JOBS_ADDRESS
def stop(job_id: str, address: str) -> None:
    """Stop a running job (finished runs stay recorded; running it again resumes)."""
    stopped = _jobs(address).stop_job(job_id)
    click.echo(f"{job_id}: {'stop requested' if stopped else 'not running'}")


HOST = click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind; keep loopback unless you mean it."
)
EXPOSE = click.option(
    "--expose",
    is_flag=True,
    help="Allow a non-loopback --host: serve with MLflow's basic authentication (admin password from "
    "MLFLOW_AUTH_ADMIN_PASSWORD, everyone else read-only).",
)


def _exposure(host: str, port: int, expose: bool, what: str) -> list[str]:
    """MLflow's extra arguments for binding ``host``: none on loopback; elsewhere only with
    ``--expose``, then behind basic authentication, and said out loud."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return []
    if not expose:
        raise UserError(
            f"--host {host} lets anyone who can reach this machine read and write {what}: "
            "add --expose to serve it with MLflow's basic authentication, or keep --host 127.0.0.1"
        )
    if not (os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or os.environ.get("MLFLOW_AUTH_CONFIG_PATH")):
        raise UserError("--expose needs an admin password: set MLFLOW_AUTH_ADMIN_PASSWORD (or MLFLOW_AUTH_CONFIG_PATH)")
    # MLflow's auth app signs its CSRF tokens with this key; one per server process, shared by its workers
    os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    click.echo(
        f"exposing {what} on http://{host}:{port} to every host that can reach it, with basic authentication: "
        "user 'admin' (MLFLOW_AUTH_ADMIN_PASSWORD) may write, other users read (MLflow's default permission)"
    )
    return ["--app-name", "basic-auth"]


@main.command()
@HOST
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--backend-store-uri", default="sqlite:///mlflow-server.db", show_default=True, help="SQL store of runs.")
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True, help="Where artifacts are kept.")
@EXPOSE
def server(host: str, port: int, backend_store_uri: str, artifacts_destination: str, expose: bool) -> None:
    """A shared MLflow tracking server: SQL backend, proxied artifacts, loopback by default."""
    auth = _exposure(host, port, expose, f"the runs and models of {backend_store_uri}")
    click.echo(f"MLflow tracking server on http://{host}:{port}; point studies at it with")
    click.echo(f"  export MLFLOW_TRACKING_URI=http://{host}:{port}")
    _exec_mlflow(
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        *auth,
    )


def _answer(function, *args) -> None:
    from cluster.console import make_console

    try:
        function(*args, make_console())
    except LabelcurveError as error:
        raise UserError(str(error)) from None


def _study_in_store(_ctx: click.Context, _param: click.Parameter, study: str | None) -> str | None:
    """Look the study up before the command loads MLflow: a store that is not there (opening it
    would create it) or a server without the study is one line, within a second."""
    try:
        check_lookup(tracking_uri(), study=study)
    except LabelcurveError as error:
        raise UserError(str(error)) from None
    return study


STUDY = click.option(
    "--study",
    default=None,
    callback=_study_in_store,
    help="Study name (the MLflow experiment); default: the store's only study.",
)
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


def _registry(model: str | None = None):
    """The registry of the tracking store, once ``model`` (if given) is known to be in a store
    that exists: a look-up opens no missing store, which MLflow would create."""
    uri = tracking_uri()
    try:
        check_tracking_server(uri)
        if model:
            check_lookup(uri, model=model)
    except TrackingError as error:
        raise UserError(str(error)) from None
    from cluster.registry import use_store  # MLflow: only once its server answers

    return use_store(uri)


@main.group()
def model() -> None:
    """Pretrained backbones in the MLflow model registry: list, pull, alias.

    \b
    Example:
      labelcurve model list
      labelcurve model alias simclr-small_cnn-digits/1 champion
      labelcurve model pull simclr-small_cnn-digits@champion -o backbone/
    """


@model.command("list")
def list_models() -> None:
    """List registered backbones with their tags (newest version of each)."""
    from rich.table import Table

    rows = []
    if store_exists(tracking_uri()):  # a missing store is not created only to be found empty
        client = _registry()
        from cluster.registry import models as registered

        rows = registered(client)
    if not rows:
        click.echo("no registered backbones yet: every `labelcurve run` that pretrains registers one")
        return
    columns = [
        "name",
        "latest",
        "aliases",
        "method",
        "backbone",
        "in_channels",
        "image_size",
        "dataset",
        "epochs",
        "knn_accuracy",
        "study",
    ]
    table = Table(title="registered backbones (tags of the newest version)")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in columns])
    make_console().print(table)


@model.command()
@click.argument("model")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Folder to write to.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder, replacing its backbone files.")
def pull(model: str, output: str, force: bool) -> None:
    """Write a registered backbone to a folder: MODEL is NAME, NAME@ALIAS or NAME/VERSION.

    The folder gets model.safetensors (the weights) and card.json (architecture, input size,
    channels, normalization, provenance); load it with pretrain.load_backbone(FOLDER).
    """
    try:
        client = _registry(model)  # before MLflow is imported: a missing store or model is said at once
        from cluster.registry import pull as pull_model

        folder, card = pull_model(client, model, output, force)
    except LabelcurveError as error:
        raise UserError(str(error)) from None
    click.echo(f"pulled {model} ({card.method} {card.backbone}, {card.in_channels}x{card.image_size}px) to {folder}")


@model.command()
@click.argument("model")
@click.argument("alias")
def alias(model: str, alias: str) -> None:
    """Point ALIAS (e.g. champion) at MODEL, given as NAME/VERSION or NAME@OTHER_ALIAS."""
    client = _registry(model)
    from cluster.registry import resolve

    try:
        concrete = resolve(client, model if model.startswith("models:/") else f"models:/{model}")
    except LabelcurveError as error:
        raise UserError(str(error)) from None
    if alias.lower() == "latest":
        raise UserError("'latest' is reserved by MLflow and always names the newest version: choose another alias")
    name, version = concrete.removeprefix("models:/").rsplit("/", 1)
    client.set_registered_model_alias(name, alias, version)
    click.echo(f"models:/{name}@{alias} -> version {version}")


@main.command()
@HOST
@click.option("--port", default=5000, show_default=True, type=int)
@EXPOSE
def ui(host: str, port: int, expose: bool) -> None:
    """Open the MLflow UI on the study store (MLFLOW_TRACKING_URI or ./mlflow.db); prints each
    study's runs table."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        click.echo(f"The tracking server already serves the UI: open {redacted(uri)}")
        return
    auth = _exposure(host, port, expose, f"the runs and models of {uri}")
    from mlflow import MlflowClient

    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    click.echo(f"MLflow UI for {uri} on {base} (Ctrl+C to stop)")
    for experiment in MlflowClient(uri).search_experiments():
        if experiment.name != "Default":
            click.echo(f"  study {experiment.name}: {runs_url(base, experiment.experiment_id)}")
    _exec_mlflow("ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), *auth)


def _exec_mlflow(*args: str) -> None:
    """Become the MLflow server, so that signals (Ctrl+C, SIGTERM) reach it directly."""
    # MLflow's server-side job runner (GenAI jobs) starts a dozen worker processes labelcurve never uses.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", *args], env)


def _moved(command: click.Command, old: str, new: str) -> click.Command:
    """``labelcurve OLD`` kept for one release: hidden, it says the new spelling and runs it."""

    def callback(**kwargs):
        click.echo(f"note: `labelcurve {old}` is now `labelcurve {new}`", err=True)
        return command.callback(**kwargs)

    return click.Command(
        old, params=command.params, callback=callback, hidden=True, context_settings=command.context_settings
    )


for _old, _group, _command in [
    ("submit", "job", submit),
    ("jobs", "job", list_jobs),
    ("status", "job", status),
    ("logs", "job", logs),
    ("stop", "job", stop),
    ("models", "model", list_models),
    ("pull", "model", pull),
    ("alias", "model", alias),
]:
    main.add_command(_moved(_command, _old, f"{_group} {_command.name}"))


if __name__ == "__main__":  # the supervised study driver: python -m cluster.cli run ...
    main()
