"""The stack itself: ``echoctl config show``, ``doctor``, ``airflow up|down|status|dags-test`` and
``cluster up|down|status``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from echo_lib.core.config import effective_items
from echo_lib.ops.cli.common import (
    JsonOpt,
    console,
    fail,
    failing,
    loaded,
    parse_date,
    printed_json,
    say_dim,
)
from echo_lib.ops.tables import print_table

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
airflow_app = typer.Typer(
    help="Run Airflow's components for Echo, bound to airflow.host.", no_args_is_help=True
)


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the effective configuration and where each value came from."""
    items = effective_items(loaded(ctx))
    if as_json:
        print(json.dumps({k: {"value": v, "origin": o} for k, v, o in items}, indent=2, default=str))
        return
    table = Table(title="Echo configuration", title_justify="left")
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", style="dim")
    for key, value, origin in items:
        table.add_row(key, json.dumps(value) if not isinstance(value, str) else value, origin)
    print_table(console, table)
    source = loaded(ctx).file
    console.print(f"config file: {source or 'none (embedded defaults)'}", highlight=False)


def doctor(
    ctx: typer.Context,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="run just these checks (repeatable)")
    ] = None,
) -> None:
    """Check, for real, that every component of the stack works here."""
    from echo_lib.ops.doctor import CHECKS, run_checks

    unknown = sorted(set(only or []) - set(CHECKS))
    if unknown:
        raise fail(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}", code=2)
    cfg = loaded(ctx).config
    with console.status("running checks ..."):
        results = run_checks(cfg, only)
    table = Table(title="echoctl doctor", title_justify="left")
    table.add_column("check", style="cyan")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    for r in results:
        table.add_row(r.name, "[green]ok[/]" if r.ok else "[bold red]FAIL[/]", f"{r.seconds:.1f} s", r.detail)
    print_table(console, table)
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise fail(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    console.print(f"[green]all {len(results)} checks passed[/]")


@airflow_app.command("up")
def airflow_up(ctx: typer.Context) -> None:
    """Start api-server, scheduler, dag-processor and triggerer (SQLite, LocalExecutor)."""
    from echo_lib.ops.airflow_services import AirflowError, admin_password, up

    cfg = loaded(ctx).config
    with (
        failing("airflow up failed", AirflowError),
        console.status("starting Airflow (db migrate, 4 components) ..."),
    ):
        state = up(cfg)
    pids = ", ".join(f"{n} {c['pid']}" for n, c in state["components"].items())
    console.print(
        f"Airflow UI: {state['url']}  (user {cfg.airflow.admin_user}, password {admin_password(cfg)})"
    )
    console.print(f"components: {pids}; logs in {cfg.airflow_home / 'logs' / 'components'}", highlight=False)
    console.print("stop with: echoctl airflow down   (or make airflow-down)")


@airflow_app.command("down")
def airflow_down(ctx: typer.Context) -> None:
    """Stop the components (SIGTERM to each process group, SIGKILL after a grace period)."""
    from echo_lib.ops.airflow_services import down

    stopped = down(loaded(ctx).config)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@airflow_app.command("status")
def airflow_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Which components run, and whether the API answers."""
    from echo_lib.ops.airflow_services import status

    state = status(loaded(ctx).config)
    if printed_json(as_json, state):
        return
    for name, c in state["components"].items():
        console.print(f"{name}: pid {c['pid']} {'running' if c['running'] else 'stopped'}")
    console.print(f"API {state['url']}: {'healthy' if state['api_healthy'] else 'not answering'}")


@airflow_app.command("dags-test")
def airflow_dags_test(
    ctx: typer.Context,
    dag_id: Annotated[str, typer.Argument(help="echo_world, echo_nightly or echo_train")],
    logical_date: Annotated[str, typer.Argument(help="YYYY-MM-DD")],
) -> None:
    """One real run of a DAG in-process (``airflow dags test``) with Echo's Airflow environment."""
    from echo_lib.ops.airflow_services import AirflowError, dags_test

    cfg = loaded(ctx).config
    day = parse_date(logical_date).isoformat()
    log = cfg.var_path / "logs" / "airflow" / f"{dag_id}-{day}.log"
    with failing("", AirflowError), console.status(f"airflow dags test {dag_id} {day} (log: {log}) ..."):
        dags_test(cfg, dag_id, day, log=log)
    console.print(f"{dag_id} {day}: success (log: {log})", highlight=False)


cluster_app = typer.Typer(
    help="Cluster mode on this machine: PostgreSQL, an MLflow server, Spark standalone, Airflow.",
    no_args_is_help=True,
)


@cluster_app.command("up")
def cluster_up(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, help="Spark workers")] = 2,
    worker_cores: Annotated[int, typer.Option(min=1, help="cores per worker")] = 1,
    worker_memory: Annotated[
        str, typer.Option(help="memory per worker (an executor needs >= 450m)")
    ] = "512m",
    airflow: Annotated[
        bool, typer.Option("--airflow/--no-airflow", help="also start Airflow on PostgreSQL")
    ] = True,
) -> None:
    """Start the topology as real processes on 127.0.0.1 and write the config that points Echo at it."""
    from echo_lib.ops.cluster import ClusterError, up

    cfg = loaded(ctx).config
    with failing("cluster up failed", ClusterError, RuntimeError):
        state = up(
            cfg,
            workers=workers,
            worker_cores=worker_cores,
            worker_memory=worker_memory,
            airflow=airflow,
            say=say_dim,
        )
    for name, url in state["urls"].items():
        console.print(f"{name} UI: {url}", highlight=False)
    console.print(
        f"point Echo at it: echoctl --config {state['config']} ...   (or ECHO_CONFIG={state['config']})",
        highlight=False,
    )
    console.print("stop with: echoctl cluster down")


@cluster_app.command("down")
def cluster_down(ctx: typer.Context) -> None:
    """Stop every process of the topology (Airflow, Spark, MLflow, then PostgreSQL); data stays."""
    from echo_lib.ops.cluster import down

    stopped = down(loaded(ctx).config)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@cluster_app.command("status")
def cluster_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Which processes run, whether each service answers, and where the UIs are."""
    from echo_lib.ops.cluster import ClusterError, status

    with failing("", ClusterError):
        state = status(loaded(ctx).config)
    if printed_json(as_json, state):
        return
    for name, c in state["components"].items():
        console.print(f"{name}: pid {c['pid']} {'running' if c['running'] else 'stopped'}", highlight=False)
    for name, ok in state["health"].items():
        console.print(f"{name}: {'healthy' if ok else 'NOT answering'}", highlight=False)
    for name, url in state["urls"].items():
        console.print(f"{name} UI: {url}", highlight=False)
    console.print(f"config: {state['config']}", highlight=False)
    if not state["healthy"]:
        raise typer.Exit(1)
