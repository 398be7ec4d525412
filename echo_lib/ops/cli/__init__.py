"""``echoctl``: the command line of Echo.

Global options come before the command: ``echoctl --config prod.yaml --set spark.master=yarn doctor``.
Every command prints a short human summary (or one JSON object with ``--json``) and exits non-zero
with a one-line reason on failure. The commands live by group: ``stack`` (config, doctor, airflow),
``data`` (world, mining and erasure), ``model`` (bootstrap, train, calibrate), ``judge`` (evaluate, compare,
promote, rollback, history), ``experiment`` (flywheel); what they share is in ``common``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from echo_lib.core.config import ConfigError, load_config, parse_overrides, quiet_libraries
from echo_lib.ops.cli import data, experiment, judge, model, stack
from echo_lib.ops.cli.common import fail

app = typer.Typer(
    name="echoctl",
    help="Echo: turn users' refinements of an agent's proposals into a better agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="YAML config file (default: $ECHO_CONFIG or ./echo.yaml)"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one key, e.g. --set spark.master=yarn (repeatable)"),
    ] = None,
) -> None:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep command output to its summary
    quiet_libraries()
    try:
        ctx.obj = load_config(config, parse_overrides(set_ or []))
    except ConfigError as exc:
        raise fail(str(exc), code=2) from exc


# the commands in the order of the loop, which is also the order of `echoctl --help`
for name, command in (
    ("doctor", stack.doctor),
    ("bootstrap", model.bootstrap),
    ("simulate", data.simulate),
    ("acceptance", data.acceptance),
    ("ingest", data.ingest),
    ("mine", data.mine),
    ("build-dataset", data.build_dataset),
    ("forget", data.forget),
    ("expire", data.expire),
    ("train", model.train),
    ("train-node", model.train_node),
    ("evaluate", judge.evaluate),
    ("calibrate", model.calibrate),
    ("compare", judge.compare),
    ("promote", judge.promote),
    ("rollback", judge.rollback),
    ("history", judge.history),
    ("flywheel", experiment.flywheel),
):
    app.command(name)(command)
app.add_typer(data.import_app, name="import")
app.add_typer(stack.config_app, name="config")
app.add_typer(stack.airflow_app, name="airflow")
app.add_typer(stack.cluster_app, name="cluster")

if __name__ == "__main__":
    app()
