"""What every ``echoctl`` command shares: the consoles, the loaded config, and the three things
each command does the same way: fail with one line, print JSON when asked, and show progress."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from echo_lib.core.config import LoadedConfig

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of a summary")]
SplitOpt = Annotated[str, typer.Option("--split", help="experience, heldout or calibration")]
CorpusOpt = Annotated[
    list[str] | None, typer.Option("--corpus", help="team repo directory (repeatable); default: config")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="model URI or directory (default: models:/<name>@champion)")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def failing(what: str, *errors: type[BaseException]) -> Iterator[None]:
    """A command's expected errors become one line, ``error: <what>: <reason>``, and exit code 1;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except errors as exc:
        raise fail(f"{what}: {exc}" if what else str(exc)) from exc


def loaded(ctx: typer.Context) -> LoadedConfig:
    return ctx.find_root().obj


def printed_json(as_json: bool, value: Any) -> bool:
    """With ``--json``, print ``value`` as one JSON object and say so (the command then returns)."""
    if as_json:
        print(json.dumps(value, default=str))
    return as_json


def parse_date(value: str, option: str = "--date"):
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} must be YYYY-MM-DD, got {value!r}", code=2) from None


def say_dim(message: str) -> None:
    """A progress line from a job or stage (escaped: a Spark stage name may hold rich markup)."""
    from rich.markup import escape

    err_console.print(f"[dim]{escape(message)}[/]", highlight=False)


def run_world(label: str, fn: Callable[..., Any], **kwargs) -> Any:
    """Run a world function with progress: a live bar on a terminal; in a log, where a bar would
    only be drawn once at the end, a line at most every 30 s."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from echo_lib.agent.engine import ModelLoadError
    from echo_lib.world.runner import ProgressLines

    columns = "sessions, {task.fields[events]:,} events, {task.fields[rate]} events/s"
    live = err_console.is_terminal
    bar = (
        Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(columns),
            TimeElapsedColumn(),
            console=err_console,
        )
        if live
        else None
    )
    with bar or nullcontext():
        task = bar.add_task(label, total=None, events=0, rate="-") if bar else None
        events = [0]
        lines = ProgressLines(lambda m: err_console.print(m, highlight=False, markup=False), label)

        def on_plan(sessions: int) -> None:
            if bar:
                bar.update(task, total=sessions)
            else:
                lines.plan(sessions)

        def progress(sessions: int, new_events: int) -> None:
            if not bar:
                lines(sessions, new_events)
                return
            events[0] += new_events
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{events[0] / elapsed:,.0f}" if elapsed > 0 else "-"
            bar.update(task, advance=sessions, events=events[0], rate=rate)

        with failing("", ModelLoadError, ValueError, OSError):
            return fn(on_plan=on_plan, progress=progress, **kwargs)
