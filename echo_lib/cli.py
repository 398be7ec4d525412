"""``echoctl``: the command line of Echo.

Global options come before the command: ``echoctl --config prod.yaml --set spark.master=yarn doctor``.
Every command prints a short human summary and exits non-zero with a one-line reason on failure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
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
    import logging
    import os

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep command output to its summary
    # libraries' download and weight-loading bars are not Echo's progress: keep them out
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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


@app.command()
def bootstrap(
    ctx: typer.Context,
    preset: Annotated[str | None, typer.Option(help="model/training preset (default: train.preset)")] = None,
    num_procs: Annotated[
        int | None, typer.Option("--num-procs", help="training ranks (default: train.num_procs)")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="override the preset's step budget")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="train and register a new v0 even if a champion exists")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object with the result")] = False,
) -> None:
    """Train the v0 agent on public code and register it as champion (no-op if one exists)."""
    from echo_lib.bootstrap import BootstrapError
    from echo_lib.bootstrap import bootstrap as run_bootstrap
    from echo_lib.corpus import CorpusError

    cfg = loaded(ctx).config
    try:
        result = run_bootstrap(
            cfg,
            preset_name=preset,
            num_procs=num_procs,
            max_steps=max_steps,
            force=force,
            progress=_say_dim,
        )
    except (BootstrapError, CorpusError, ValueError) as exc:
        raise fail(f"bootstrap failed: {exc}") from exc
    name = cfg.mlflow.registered_model
    if as_json:
        print(
            json.dumps(
                {
                    "status": result.status,
                    "version": result.version,
                    "run_id": result.run_id,
                    "report": {k: v for k, v in (result.report or {}).items() if k != "history"},
                    "data": result.data,
                    "seconds": result.seconds,
                },
                default=str,
            )
        )
        return
    if result.status == "exists":
        console.print(
            f"champion already registered: models:/{name}/{result.version} (use --force to retrain)"
        )
        return
    r = result.report or {}
    console.print(
        f"registered models:/{name}/{result.version} as @champion in {result.seconds:.0f} s: "
        f"{r['parameters']:,} parameters, {r['tokens']:,} tokens, final loss {r['final_loss']:.3f}, "
        f"{r['tokens_per_s']:.0f} tokens/s on {r['world_size']} rank(s) (run {result.run_id})",
        highlight=False,
    )


def _parse_date(value: str):
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"--date must be YYYY-MM-DD, got {value!r}", code=2) from None


def _progress_bar(label: str, *extra: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(e) for e in extra),
        TimeElapsedColumn(),
        console=err_console,
    )


def _say_dim(message: str) -> None:
    """A progress line from a job or stage (escaped: a Spark stage name may hold rich markup)."""
    from rich.markup import escape

    err_console.print(f"[dim]{escape(message)}[/]", highlight=False)


def _run_world(label: str, fn, **kwargs):
    """Run a world function with progress: a live bar on a terminal; in a log, where a bar would
    only be drawn once at the end, a line at most every 30 s."""
    from contextlib import nullcontext

    from echo_lib.engine import ModelLoadError
    from echo_lib.world.runner import ProgressLines

    live = err_console.is_terminal
    columns = "sessions, {task.fields[events]:,} events, {task.fields[rate]} events/s"
    with _progress_bar(label, columns) if live else nullcontext() as bar:
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

        try:
            return fn(on_plan=on_plan, progress=progress, **kwargs)
        except (ModelLoadError, ValueError, OSError) as exc:
            raise fail(str(exc)) from exc


SplitOpt = Annotated[str, typer.Option("--split", help="experience, heldout or calibration")]
CorpusOpt = Annotated[
    list[str] | None, typer.Option("--corpus", help="team repo directory (repeatable); default: config")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="model URI or directory (default: models:/<name>@champion)")
]


@app.command()
def simulate(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="logical date YYYY-MM-DD")],
    sessions: Annotated[int | None, typer.Option(help="sessions (default: world.sessions)")] = None,
    split: SplitOpt = "experience",
    corpus_dir: CorpusOpt = None,
    model: ModelOpt = None,
    seed: Annotated[int | None, typer.Option(help="world seed (default: world.seed)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Simulate one day of developers against the served model; land its raw telemetry."""
    from echo_lib.world.runner import simulate_day

    cfg = loaded(ctx).config
    day = _parse_date(date)
    s = _run_world(
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
    if as_json:
        print(json.dumps({k: v for k, v in s.items() if k != "files"}, default=str))
        return
    console.print(
        f"{s['date']}: {s['sessions']} sessions, {s['events']:,} events ({s['lines']:,} lines delivered, "
        f"{s['late_lines']} late, {s['duplicates']} duplicates), {s['shown']} proposals shown, "
        f"{s['accepted']} accepted: acceptance {s['acceptance_rate']:.1%} "
        f"[{s['ci_low']:.1%}, {s['ci_high']:.1%}] by {s['model_version']}; "
        f"{s['events_per_s']:.0f} events/s",
        highlight=False,
    )


@app.command()
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
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Measure acceptance in the world on held-out code (nothing is written to the lake)."""
    from echo_lib.world.runner import measure_acceptance

    cfg = loaded(ctx).config
    s = _run_world(
        "measuring acceptance",
        measure_acceptance,
        cfg=cfg,
        model_uri=model,
        split=split,
        corpus_dirs=corpus_dir,
        sessions=sessions,
        seed=seed,
    )
    if as_json:
        print(json.dumps({k: v for k, v in s.items() if k != "per_session"}, default=str))
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
    console.print(table)


def _spark_job(cfg, job: str, args: list[str], *, log_name: str, doing: str) -> dict:
    """Submit ``jobs/<job>.py`` with the lake and master from config; one-line error on failure."""
    from echo_lib.submit import JobFailed, run_job

    try:
        with console.status(f"{doing} on {cfg.spark.master} ..."):
            return run_job(
                cfg,
                job,
                [*args, "--lake", cfg.lake_uri],
                log_name=log_name,
                progress=_say_dim,
            )
    except JobFailed as exc:
        raise fail(str(exc)) from exc


@app.command()
def ingest(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="partition date YYYY-MM-DD")],
    as_json: Annotated[bool, typer.Option("--json", help="print the partition manifest as JSON")] = False,
) -> None:
    """Validate one day of raw telemetry into bronze (spark-submit on spark.master)."""
    cfg = loaded(ctx).config
    day = _parse_date(date).isoformat()
    m = _spark_job(cfg, "ingest_events", ["--date", day], log_name=f"ingest-{day}", doing=f"ingesting {day}")
    if as_json:
        print(json.dumps(m))
        return
    reasons = ", ".join(f"{k} {v}" for k, v in m["quarantined_by_reason"].items()) or "none"
    console.print(
        f"{day}: read {m['lines_read']:,} lines = {m['valid']:,} valid + {m['quarantined']:,} quarantined "
        f"({reasons}); {m['duplicates_removed']:,} duplicates removed; {m['written']:,} events in bronze",
        highlight=False,
    )


@app.command()
def mine(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="partition date YYYY-MM-DD")],
    as_json: Annotated[bool, typer.Option("--json", help="print the partition manifest as JSON")] = False,
) -> None:
    """Mine one day of bronze events into silver refinements (spark-submit on spark.master)."""
    cfg = loaded(ctx).config
    day = _parse_date(date).isoformat()
    m = _spark_job(cfg, "mine_refinements", ["--date", day], log_name=f"mine-{day}", doing=f"mining {day}")
    if as_json:
        print(json.dumps(m))
        return
    outcomes = ", ".join(f"{k} {v}" for k, v in m["by_outcome"].items())
    orphans = sum(m["orphans"].values())
    console.print(
        f"{day}: {m['sessions']} sessions, {m['events']:,} events -> {m['refinements']:,} refinements "
        f"({outcomes}); finals from {m['final_source']}; {orphans} orphan events kept aside",
        highlight=False,
    )


@app.command("build-dataset")
def build_dataset(
    ctx: typer.Context,
    date: Annotated[str | None, typer.Option("--date", help="one date YYYY-MM-DD")] = None,
    start: Annotated[str | None, typer.Option("--from", help="first date of a window")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last date of a window")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Build gold sft/preference/kto datasets from silver refinements (spark-submit)."""
    cfg = loaded(ctx).config
    if date:
        window, label = ["--date", _parse_date(date).isoformat()], _parse_date(date).isoformat()
    elif start and end:
        window = ["--from", _parse_date(start).isoformat(), "--to", _parse_date(end).isoformat()]
        label = f"{window[1]}..{window[3]}"
    else:
        raise fail("give --date, or --from and --to", code=2)
    m = _spark_job(
        cfg, "build_dataset", window, log_name=f"build-dataset-{label}", doing=f"building gold for {label}"
    )
    if as_json:
        print(json.dumps(m))
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
    console.print(table)
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in m["datasets"].items())
    console.print(f"gold/{m['dt']}: {rows} (MLflow run {m.get('mlflow_run_id')})", highlight=False)


@app.command()
def train(
    ctx: typer.Context,
    start: Annotated[str | None, typer.Option("--from", help="first gold date of the window")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last gold date of the window")] = None,
    objective: Annotated[
        str | None, typer.Option(help="sft, dpo, kto or sft+dpo (default: learn.objective)")
    ] = None,
    num_procs: Annotated[
        int | None, typer.Option("--num-procs", help="training ranks (default: train.num_procs)")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="steps per stage (default: learn.max_steps)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="finish the last interrupted run from its checkpoint")
    ] = False,
    control: Annotated[
        bool,
        typer.Option(
            "--control", help="equal-compute control: same steps on public code instead of gold (@control)"
        ),
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="an equal-compute baseline instead of gold, never promoted: public (@control), "
            "team-experience (the team's own files, @repo) or team-heldout (the held-out files "
            "themselves, @instrument: can evaluation see learning?)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object with the result")] = False,
) -> None:
    """Refine the champion on gold datasets (DeepSpeed + TRL) and register it as @challenger."""
    from echo_lib.corpus import CorpusError
    from echo_lib.learn import TrainError
    from echo_lib.learn import train as run_train

    cfg = loaded(ctx).config
    try:
        result = run_train(
            cfg,
            start=_parse_date(start).isoformat() if start else None,
            end=_parse_date(end).isoformat() if end else None,
            objective=objective,
            num_procs=num_procs,
            max_steps=max_steps,
            resume=resume,
            control=control,
            baseline=baseline,
            progress=_say_dim,
        )
    except (TrainError, CorpusError, ValueError, FileNotFoundError) as exc:
        raise fail(f"train failed: {exc}") from exc
    if as_json:
        print(json.dumps(dataclasses.asdict(result), default=str))
        return
    name = cfg.mlflow.registered_model
    for s in result.stages:
        console.print(
            f"  {s['name']}: {s['steps']} steps, {s['rows']:,} rows ({s['replay_rows']:,} replay, "
            f"{s.get('context_rows') or 0:,} context), "
            f"{s['tokens']:,} tokens at {s['tokens_per_s'] or 0:,.0f}/s, final loss {s['final_loss']:.3f}",
            highlight=False,
        )
    from echo_lib.learn import BASELINES

    alias = f"@{BASELINES[baseline or 'public'][0]}" if (control or baseline) else "@challenger"
    console.print(
        f"registered models:/{name}/{result.version} as {alias} (parent v{result.parent_version}, "
        f"gold {result.dates[0]}..{result.dates[-1]}) in {result.seconds:.0f} s; MLflow run {result.run_id}",
        highlight=False,
    )


@app.command()
def evaluate(
    ctx: typer.Context,
    challenger: Annotated[
        str | None, typer.Option(help="version number or alias to judge (default: @challenger)")
    ] = None,
    against: Annotated[
        str | None, typer.Option(help="baseline version or alias (default: @champion)")
    ] = None,
    sessions: Annotated[
        int | None, typer.Option(help="held-out world sessions (default: world.acceptance_sessions)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
) -> None:
    """Challenger vs champion: paired held-out acceptance, offline metrics, forgetting check."""
    from echo_lib.engine import ModelLoadError
    from echo_lib.evaluate import EvaluationError, render_report
    from echo_lib.evaluate import evaluate as run_evaluate

    cfg = loaded(ctx).config
    try:
        report = run_evaluate(
            cfg,
            challenger=challenger,
            against=against,
            sessions=sessions,
            progress=_say_dim,
        )
    except (EvaluationError, ModelLoadError) as exc:
        raise fail(f"evaluate failed: {exc}") from exc
    if as_json:
        print(json.dumps(report, default=str))
        return
    console.print(render_report(report), highlight=False)


@app.command()
def calibrate(
    ctx: typer.Context,
    version: Annotated[str, typer.Option(help="the version whose weights get a new show policy")],
    against: Annotated[str, typer.Option(help="the version the policy must beat (its champion)")] = "1",
) -> None:
    """Calibrate a show policy for an existing version's weights and register the pair as a new
    version (no training): what the policy filters, apart from what the model learned."""
    from echo_lib.calibrate import recalibrate
    from echo_lib.engine import ModelLoadError

    cfg = loaded(ctx).config
    try:
        new = recalibrate(cfg, version, against, progress=_say_dim)
    except (ModelLoadError, ValueError) as exc:
        raise fail(f"calibrate failed: {exc}") from exc
    console.print(f"registered models:/{cfg.mlflow.registered_model}/{new} (weights of v{version})")


@app.command()
def compare(
    ctx: typer.Context,
    versions: Annotated[str, typer.Option(help="comma-separated versions or aliases to compare")],
    base: Annotated[str, typer.Option(help="the version every gain is paired against")] = "1",
    split: SplitOpt = "heldout",
    sessions: Annotated[
        int | None, typer.Option(help="world sessions (default: world.acceptance_sessions)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seed (default: world.acceptance_seed)")] = None,
    forgetting: Annotated[
        bool, typer.Option(help="also run the forgetting check on reserved public code")
    ] = True,
    markdown: Annotated[Path | None, typer.Option(help="also write the table to this markdown file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full comparison as JSON")] = False,
) -> None:
    """Several versions side by side on the same world sessions, each gain paired against --base."""
    from echo_lib.engine import ModelLoadError
    from echo_lib.evaluate import EvaluationError, render_comparison
    from echo_lib.evaluate import compare as run_compare

    cfg = loaded(ctx).config
    try:
        result = run_compare(
            cfg,
            [v.strip() for v in versions.split(",") if v.strip()],
            base=base,
            sessions=sessions,
            seed=seed,
            split=split,
            forgetting=forgetting,
            progress=_say_dim,
        )
    except (EvaluationError, ModelLoadError, ValueError) as exc:
        raise fail(f"compare failed: {exc}") from exc
    table = render_comparison(result)
    if markdown:
        markdown.write_text(table)
    if as_json:
        print(json.dumps(result, default=str))
        return
    console.print(table, highlight=False, soft_wrap=True)


@app.command()
def promote(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Option(help="version to judge (default: @challenger)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="record the verdict, move nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """The gate: record its verdict on the version; move @champion when it passes and promotion is enabled."""
    from echo_lib.gate import GateError
    from echo_lib.gate import promote as run_promote

    cfg = loaded(ctx).config
    try:
        outcome = run_promote(cfg, version=version, dry_run=dry_run)
    except GateError as exc:
        raise fail(f"promote failed: {exc}") from exc
    if as_json:
        print(json.dumps(outcome))
        return
    console.print(f"gate verdict for v{outcome['version']}: {outcome['verdict'].upper()} ({outcome['mode']})")
    for reason in outcome["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    moved = "promoted" if outcome["promoted"] else "unchanged"
    console.print(f"@champion: v{outcome['champion_before']} -> v{outcome['champion_after']} ({moved})")


@app.command()
def rollback(
    ctx: typer.Context,
    to: Annotated[
        str | None, typer.Option("--to", help="version to restore (default: the previous champion)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="allow a version that failed its gate")] = False,
    reason: Annotated[str, typer.Option("--reason", help="why, for the history")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """Move @champion back to the previous (or given) version and record it in the history."""
    from echo_lib.gate import GateError
    from echo_lib.gate import rollback as run_rollback

    cfg = loaded(ctx).config
    try:
        outcome = run_rollback(cfg, to=to, force=force, why=reason)
    except GateError as exc:
        raise fail(f"rollback refused: {exc}") from exc
    if as_json:
        print(json.dumps(outcome))
        return
    state = "moved" if outcome["moved"] else "already there"
    console.print(f"@champion: v{outcome['from']} -> v{outcome['to']} ({state})")


@app.command()
def history(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print the entries as JSON lines")] = False,
) -> None:
    """Every change of @champion: who, when, why."""
    from echo_lib.gate import history as read_history

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
    console.print(table)


airflow_app = typer.Typer(
    help="Run Airflow's components for Echo, bound to airflow.host.", no_args_is_help=True
)
app.add_typer(airflow_app, name="airflow")


@airflow_app.command("up")
def airflow_up(ctx: typer.Context) -> None:
    """Start api-server, scheduler, dag-processor and triggerer (SQLite, LocalExecutor)."""
    from echo_lib.airflow_services import AirflowError, admin_password, up

    cfg = loaded(ctx).config
    try:
        with console.status("starting Airflow (db migrate, 4 components) ..."):
            state = up(cfg)
    except AirflowError as exc:
        raise fail(f"airflow up failed: {exc}") from exc
    pids = ", ".join(f"{n} {c['pid']}" for n, c in state["components"].items())
    console.print(
        f"Airflow UI: {state['url']}  (user {cfg.airflow.admin_user}, password {admin_password(cfg)})"
    )
    console.print(f"components: {pids}; logs in {cfg.airflow_home / 'logs' / 'components'}", highlight=False)
    console.print("stop with: echoctl airflow down   (or make airflow-down)")


@airflow_app.command("down")
def airflow_down(ctx: typer.Context) -> None:
    """Stop the components (SIGTERM to each process group, SIGKILL after a grace period)."""
    from echo_lib.airflow_services import down

    stopped = down(loaded(ctx).config)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@airflow_app.command("status")
def airflow_status(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False
) -> None:
    """Which components run, and whether the API answers."""
    from echo_lib.airflow_services import status

    state = status(loaded(ctx).config)
    if as_json:
        print(json.dumps(state))
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
    from echo_lib.airflow_services import AirflowError, dags_test

    cfg = loaded(ctx).config
    day = _parse_date(logical_date).isoformat()
    log = cfg.var_path / "logs" / "airflow" / f"{dag_id}-{day}.log"
    try:
        with console.status(f"airflow dags test {dag_id} {day} (log: {log}) ..."):
            dags_test(cfg, dag_id, day, log=log)
    except AirflowError as exc:
        raise fail(str(exc)) from exc
    console.print(f"{dag_id} {day}: success (log: {log})", highlight=False)


if __name__ == "__main__":
    app()
