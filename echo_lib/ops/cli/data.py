"""The data half of the loop: the world (``simulate``, ``acceptance``), other assistants' logs
(``import continue|tabby``) and mining on Spark (``ingest``, ``mine``, ``build-dataset``, each a
spark-submit on ``spark.master``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from echo_lib.ops.cli.common import (
    CorpusOpt,
    JsonOpt,
    ModelOpt,
    SplitOpt,
    console,
    fail,
    failing,
    loaded,
    parse_date,
    printed_json,
    run_world,
    say_dim,
)
from echo_lib.ops.tables import print_table


def simulate(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="logical date YYYY-MM-DD")],
    sessions: Annotated[int | None, typer.Option(help="sessions (default: world.sessions)")] = None,
    split: SplitOpt = "experience",
    corpus_dir: CorpusOpt = None,
    model: ModelOpt = None,
    seed: Annotated[int | None, typer.Option(help="world seed (default: world.seed)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulate one day of developers against the served model; land its raw telemetry."""
    from echo_lib.world.runner import simulate_day

    cfg = loaded(ctx).config
    day = parse_date(date)
    s = run_world(
        f"simulating {day}",
        simulate_day,
        cfg=cfg,
        day=day,
        sessions=sessions,
        split=split,
        corpus_dirs=corpus_dir,
        model_uri=model,
        seed=seed,
    )
    if printed_json(as_json, {k: v for k, v in s.items() if k != "files"}):
        return
    console.print(
        f"{s['date']}: {s['sessions']} sessions, {s['events']:,} events ({s['lines']:,} lines delivered, "
        f"{s['late_lines']} late, {s['duplicates']} duplicates), {s['shown']} proposals shown, "
        f"{s['accepted']} accepted: acceptance {s['acceptance_rate']:.1%} "
        f"[{s['ci_low']:.1%}, {s['ci_high']:.1%}] by {s['model_version']}; "
        f"{s['events_per_s']:.0f} events/s",
        highlight=False,
    )


def acceptance(
    ctx: typer.Context,
    model: ModelOpt = None,
    split: SplitOpt = "heldout",
    corpus_dir: CorpusOpt = None,
    sessions: Annotated[
        int | None, typer.Option(help="sessions (default: world.acceptance_sessions)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed (default: world.acceptance_seed); same seed = paired")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure acceptance in the world on held-out code (nothing is written to the lake)."""
    from echo_lib.world.runner import measure_acceptance

    cfg = loaded(ctx).config
    s = run_world(
        "measuring acceptance",
        measure_acceptance,
        cfg=cfg,
        model_uri=model,
        split=split,
        corpus_dirs=corpus_dir,
        sessions=sessions,
        seed=seed,
    )
    if printed_json(as_json, {k: v for k, v in s.items() if k != "per_session"}):
        return
    table = Table(
        title=f"acceptance of {s['model_version']} on {s['split']} ({s['sessions']} sessions, seed {s['seed']})",
        title_justify="left",
    )
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right")
    table.add_row("acceptance rate (accepted / shown)", f"{s['acceptance_rate']:.2%}")
    table.add_row("95% CI (session bootstrap)", f"[{s['ci_low']:.2%}, {s['ci_high']:.2%}]")
    table.add_row("requests / shown / accepted", f"{s['requests']} / {s['shown']} / {s['accepted']}")
    table.add_row("shown per trigger", f"{s['shown_per_trigger']:.2f}")
    table.add_row("accepted and retained characters", f"{s['accepted_retained_chars']:,}")
    table.add_row(
        "retained characters per request [95% CI]",
        f"{s['retained_per_request']:.3f} [{s['retained_ci_low']:.3f}, {s['retained_ci_high']:.3f}]",
    )
    for outcome, count in s["outcomes"].items():
        table.add_row(f"outcome: {outcome}", str(count))
    for trigger, c in sorted(s["by_trigger"].items()):
        rate = c["accepted"] / c["shown"] if c["shown"] else 0.0
        table.add_row(f"{trigger}: shown / accepted", f"{c['shown']} / {c['accepted']} ({rate:.1%})")
    print_table(console, table)


def _spark_job(cfg, job: str, args: list[str], *, log_name: str, doing: str) -> dict:
    """Submit ``jobs/<job>.py`` with the lake and master from config; one-line error on failure."""
    from echo_lib.ops.submit import JobFailed, run_job

    with failing("", JobFailed), console.status(f"{doing} on {cfg.spark.master} ..."):
        return run_job(cfg, job, [*args, "--lake", cfg.lake_uri], log_name=log_name, progress=say_dim)


def _day_job(ctx: typer.Context, date: str, job: str, log: str, doing: str) -> tuple[str, dict]:
    """(the day, the job's manifest) of a one-day job; its log is ``<log>-<day>``."""
    day = parse_date(date).isoformat()
    return day, _spark_job(
        loaded(ctx).config, job, ["--date", day], log_name=f"{log}-{day}", doing=f"{doing} {day}"
    )


import_app = typer.Typer(
    help="Land another assistant's completion log as raw telemetry (then ingest and mine its dates).",
    no_args_is_help=True,
)
LogPath = Annotated[Path, typer.Argument(help="the log file, or the folder that holds the client's logs")]


def _import(ctx: typer.Context, fmt: str, path: Path, as_json: bool) -> None:
    from echo_lib.mining.client_logs import ClientLogError, import_logs

    with failing(f"import {fmt}", ClientLogError, OSError):
        r = import_logs(loaded(ctx).config.lake_uri, fmt, path)
    if printed_json(as_json, r):
        return
    reasons = ", ".join(f"{k} {v}" for k, v in r["quarantine_reasons"].items()) or "none"
    reactions = ", ".join(f"{k} {v}" for k, v in r["reactions"].items())
    console.print(
        f"{fmt}: {len(r['files'])} files, {r['lines']:,} lines = {r['mapped_lines']:,} mapped + "
        f"{r['quarantined']:,} quarantined ({reasons}) -> {r['shown']:,} shown proposals ({reactions}), "
        f"{r['events']:,} events in {r['sessions']:,} sessions",
        highlight=False,
    )
    for day in r["dates"]:
        console.print(f"next: echoctl ingest --date {day} && echoctl mine --date {day}", highlight=False)


@import_app.command("continue")
def import_continue(ctx: typer.Context, path: LogPath, as_json: JsonOpt = False) -> None:
    """Continue's autocomplete dev data (~/.continue/dev_data/<schema>/autocomplete.jsonl)."""
    _import(ctx, "continue", path, as_json)


@import_app.command("tabby")
def import_tabby(ctx: typer.Context, path: LogPath, as_json: JsonOpt = False) -> None:
    """Tabby's event log (~/.tabby/events/YYYY-MM-DD.json)."""
    _import(ctx, "tabby", path, as_json)


def ingest(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="partition date YYYY-MM-DD")],
    as_json: JsonOpt = False,
) -> None:
    """Validate one day of raw telemetry into bronze (spark-submit on spark.master)."""
    day, m = _day_job(ctx, date, "ingest_events", "ingest", "ingesting")
    if printed_json(as_json, m):
        return
    reasons = ", ".join(f"{k} {v}" for k, v in m["quarantined_by_reason"].items()) or "none"
    console.print(
        f"{day}: read {m['lines_read']:,} lines = {m['valid']:,} valid + {m['quarantined']:,} quarantined "
        f"({reasons}); {m['duplicates_removed']:,} duplicates removed; {m['written']:,} events in bronze",
        highlight=False,
    )


def mine(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="partition date YYYY-MM-DD")],
    as_json: JsonOpt = False,
) -> None:
    """Mine one day of bronze events into silver refinements (spark-submit on spark.master)."""
    day, m = _day_job(ctx, date, "mine_refinements", "mine", "mining")
    if printed_json(as_json, m):
        return
    outcomes = ", ".join(f"{k} {v}" for k, v in m["by_outcome"].items())
    orphans = sum(m["orphans"].values())
    console.print(
        f"{day}: {m['sessions']} sessions, {m['events']:,} events -> {m['refinements']:,} refinements "
        f"({outcomes}); finals from {m['final_source']}; {orphans} orphan events kept aside",
        highlight=False,
    )


def build_dataset(
    ctx: typer.Context,
    date: Annotated[str | None, typer.Option("--date", help="one date YYYY-MM-DD")] = None,
    start: Annotated[str | None, typer.Option("--from", help="first date of a window")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last date of a window")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build gold sft/preference/kto datasets from silver refinements (spark-submit)."""
    cfg = loaded(ctx).config
    if date:
        window, label = ["--date", parse_date(date).isoformat()], parse_date(date).isoformat()
    elif start and end:
        window = ["--from", parse_date(start).isoformat(), "--to", parse_date(end).isoformat()]
        label = f"{window[1]}..{window[3]}"
    else:
        raise fail("give --date, or --from and --to", code=2)
    m = _spark_job(
        cfg, "build_dataset", window, log_name=f"build-dataset-{label}", doing=f"building gold for {label}"
    )
    if printed_json(as_json, m):
        return
    table = Table(title=f"gold funnel for {label}", title_justify="left")
    for column in ("step", "rows in", "rows out", "dropped", "why"):
        table.add_column(column)
    for s in m["funnel"]:
        if "rows_in" in s:
            table.add_row(
                s["step"], f"{s['rows_in']:,}", f"{s['rows_out']:,}", f"{s['dropped']:,}", s["reason"]
            )
        else:
            table.add_row(s["step"], "", "", "", f"{s['count']} values replaced")
    print_table(console, table)
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in m["datasets"].items())
    console.print(f"gold/{m['dt']}: {rows} (MLflow run {m.get('mlflow_run_id')})", highlight=False)


def forget(
    ctx: typer.Context,
    user: Annotated[list[str] | None, typer.Option("--user", help="user id to erase (repeatable)")] = None,
    repo: Annotated[list[str] | None, typer.Option("--repo", help="repo id to erase (repeatable)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase users' or repos' data from the lake (raw to gold), record the request so later builds
    leave them out, and list the model versions trained on it (spark-submit)."""
    from echo_lib.core.registry import actor, versions_trained_on

    if not user and not repo:
        raise fail("give --user or --repo", code=2)
    cfg = loaded(ctx).config
    args = [*(a for u in user or [] for a in ("--user", u)), *(a for r in repo or [] for a in ("--repo", r))]
    result = _spark_job(cfg, "forget", [*args, "--who", actor()], log_name="forget", doing="erasing")
    result["model_versions"] = versions_trained_on(cfg, result["gold_dates"])
    if printed_json(as_json, result):
        return
    removed = ", ".join(f"{table} {n:,}" for table, n in result["removed_rows"].items() if n) or "nothing"
    console.print(f"recorded the request; rows removed: {removed}", highlight=False)
    if result["model_versions"]:
        versions = ", ".join(f"v{v['version']} (gold {v['gold_dates']})" for v in result["model_versions"])
        console.print(
            f"trained on their data (retrain to erase it from weights too): {versions}", highlight=False
        )


def expire(
    ctx: typer.Context,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="count back from this day (default: newest raw day)")
    ] = None,
    days: Annotated[
        int | None, typer.Option(help="days of raw text to keep (default: lake.raw_text_days)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete raw, bronze, silver and quarantine partitions older than the retention allows (the
    nightly's last task does the same); gold, scrubbed, stays."""
    from pydantic import ValidationError

    from echo_lib.core.config import LakeSettings
    from echo_lib.mining.retention import expire_raw_text, newest_raw_date, summary

    cfg = loaded(ctx).config
    try:
        days = LakeSettings(raw_text_days=cfg.lake.raw_text_days if days is None else days).raw_text_days
    except ValidationError as exc:
        raise fail(f"--days {days}: {exc.errors()[0]['msg']}", code=2) from exc
    as_of = parse_date(as_of, "--as-of").isoformat() if as_of else newest_raw_date(cfg.lake_uri)
    if as_of is None:
        raise fail(f"no raw telemetry in {cfg.lake_uri}: nothing to expire", code=1)
    deleted = expire_raw_text(cfg.lake_uri, as_of, days)
    result = {"as_of": as_of, "days": days, "deleted": deleted}
    if printed_json(as_json, result):
        return
    console.print(summary(result), highlight=False)
