"""Judging models: ``evaluate`` and ``compare`` on held-out sessions, then the registry's
``promote`` (the gate), ``rollback`` and ``history``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from echo_lib.ops.cli.common import JsonOpt, SplitOpt, console, failing, loaded, printed_json, say_dim
from echo_lib.ops.tables import print_table

SessionsOpt = Annotated[
    int | None, typer.Option(help="held-out world sessions (default: world.acceptance_sessions)")
]


def evaluate(
    ctx: typer.Context,
    challenger: Annotated[
        str | None, typer.Option(help="version number or alias to judge (default: @challenger)")
    ] = None,
    against: Annotated[
        str | None, typer.Option(help="baseline version or alias (default: @champion)")
    ] = None,
    sessions: SessionsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Challenger vs champion: paired held-out acceptance, offline metrics, forgetting check."""
    from echo_lib.agent.engine import ModelLoadError
    from echo_lib.evaluation.heldout import EvaluationError, render_report
    from echo_lib.evaluation.heldout import evaluate as run_evaluate

    cfg = loaded(ctx).config
    with failing("evaluate failed", EvaluationError, ModelLoadError):
        report = run_evaluate(
            cfg, challenger=challenger, against=against, sessions=sessions, progress=say_dim
        )
    if printed_json(as_json, report):
        return
    console.print(render_report(report), highlight=False)


def compare(
    ctx: typer.Context,
    versions: Annotated[str, typer.Option(help="comma-separated versions or aliases to compare")],
    base: Annotated[str, typer.Option(help="the version every gain is paired against")] = "1",
    split: SplitOpt = "heldout",
    sessions: SessionsOpt = None,
    seed: Annotated[int | None, typer.Option(help="seed (default: world.acceptance_seed)")] = None,
    forgetting: Annotated[
        bool, typer.Option(help="also run the forgetting check on reserved public code")
    ] = True,
    markdown: Annotated[Path | None, typer.Option(help="also write the table to this markdown file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Several versions side by side on the same world sessions, each gain paired against --base."""
    from echo_lib.agent.engine import ModelLoadError
    from echo_lib.evaluation.heldout import EvaluationError, render_comparison
    from echo_lib.evaluation.heldout import compare as run_compare

    cfg = loaded(ctx).config
    with failing("compare failed", EvaluationError, ModelLoadError, ValueError):
        result = run_compare(
            cfg,
            [v.strip() for v in versions.split(",") if v.strip()],
            base=base,
            sessions=sessions,
            seed=seed,
            split=split,
            forgetting=forgetting,
            progress=say_dim,
        )
    table = render_comparison(result)
    if markdown:
        markdown.write_text(table)
    if printed_json(as_json, result):
        return
    console.print(table, highlight=False, soft_wrap=True)


def promote(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Option(help="version to judge (default: @challenger)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="record the verdict, move nothing")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The gate: record its verdict on the version; move @champion when it passes and promotion is enabled."""
    from echo_lib.evaluation.gate import GateError
    from echo_lib.evaluation.gate import promote as run_promote

    with failing("promote failed", GateError):
        outcome = run_promote(loaded(ctx).config, version=version, dry_run=dry_run)
    if printed_json(as_json, outcome):
        return
    console.print(f"gate verdict for v{outcome['version']}: {outcome['verdict'].upper()} ({outcome['mode']})")
    for reason in outcome["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    moved = "promoted" if outcome["promoted"] else "unchanged"
    console.print(f"@champion: v{outcome['champion_before']} -> v{outcome['champion_after']} ({moved})")


def rollback(
    ctx: typer.Context,
    to: Annotated[
        str | None, typer.Option("--to", help="version to restore (default: the previous champion)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="allow a version that failed its gate")] = False,
    reason: Annotated[str, typer.Option("--reason", help="why, for the history")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Move @champion back to the previous (or given) version and record it in the history."""
    from echo_lib.evaluation.gate import GateError
    from echo_lib.evaluation.gate import rollback as run_rollback

    with failing("rollback refused", GateError):
        outcome = run_rollback(loaded(ctx).config, to=to, force=force, why=reason)
    if printed_json(as_json, outcome):
        return
    state = "moved" if outcome["moved"] else "already there"
    console.print(f"@champion: v{outcome['from']} -> v{outcome['to']} ({state})")


def history(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print the entries as JSON lines")] = False,
) -> None:
    """Every change of @champion: who, when, why."""
    from echo_lib.core.registry import history as read_history

    entries = read_history(loaded(ctx).config)
    if as_json:
        for e in entries:
            print(json.dumps(e))
        return
    table = Table(title="@champion history", title_justify="left")
    for column in ("when", "action", "from", "to", "who", "why"):
        table.add_column(column)
    for e in entries:
        table.add_row(e["when"], e["action"], str(e["from"] or "-"), e["to"], e["who"], e["why"][:80])
    print_table(console, table)
