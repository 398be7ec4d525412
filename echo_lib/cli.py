"""``echoctl``: the command line of Echo.

Global options come before the command: ``echoctl --config prod.yaml --set spark.master=yarn doctor``.
Every command prints a short human summary and exits non-zero with a one-line reason on failure.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from echo_lib.config import ConfigError, LoadedConfig, effective_items, load_config, parse_overrides

app = typer.Typer(
    name="echoctl",
    help="Echo: turn users' refinements of an agent's proposals into a better agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


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
    try:
        ctx.obj = load_config(config, parse_overrides(set_ or []))
    except ConfigError as exc:
        raise fail(str(exc), code=2) from exc


def loaded(ctx: typer.Context) -> LoadedConfig:
    return ctx.find_root().obj


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
) -> None:
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
    console.print(table)
    source = loaded(ctx).file
    console.print(f"config file: {source or 'none (embedded defaults)'}", highlight=False)


@app.command()
def doctor(
    ctx: typer.Context,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="run just these checks (repeatable)")
    ] = None,
) -> None:
    """Check, for real, that every component of the stack works here."""
    from echo_lib.doctor import CHECKS, run_checks

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
    console.print(table)
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise fail(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    console.print(f"[green]all {len(results)} checks passed[/]")


if __name__ == "__main__":
    app()
