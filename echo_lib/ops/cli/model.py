"""Making models: ``bootstrap`` (v0 on public code), ``train`` (a challenger or an equal-compute
baseline from the champion) and ``calibrate`` (a show policy for existing weights)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from echo_lib.ops.cli.common import JsonOpt, console, failing, loaded, parse_date, printed_json, say_dim

NumProcsOpt = Annotated[
    int | None, typer.Option("--num-procs", help="training ranks (default: train.num_procs)")
]


def bootstrap(
    ctx: typer.Context,
    preset: Annotated[str | None, typer.Option(help="model/training preset (default: train.preset)")] = None,
    num_procs: NumProcsOpt = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="override the preset's step budget")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="train and register a new v0 even if a champion exists")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train the v0 agent on public code and register it as champion (no-op if one exists)."""
    from echo_lib.training.bootstrap import BootstrapError
    from echo_lib.training.bootstrap import bootstrap as run_bootstrap
    from echo_lib.world.corpus import CorpusError

    cfg = loaded(ctx).config
    with failing("bootstrap failed", BootstrapError, CorpusError, ValueError):
        result = run_bootstrap(
            cfg, preset_name=preset, num_procs=num_procs, max_steps=max_steps, force=force, progress=say_dim
        )
    summary = {
        "status": result.status,
        "version": result.version,
        "run_id": result.run_id,
        "report": {k: v for k, v in (result.report or {}).items() if k != "history"},
        "data": result.data,
        "seconds": result.seconds,
    }
    if printed_json(as_json, summary):
        return
    name = cfg.mlflow.registered_model
    if result.status == "exists":
        console.print(
            f"champion already registered: models:/{name}/{result.version} (use --force to retrain)"
        )
        return
    r = result.report or {}
    console.print(
        f"registered models:/{name}/{result.version} as @champion in {result.seconds:.0f} s: "
        f"{r['parameters']:,} parameters, {r['tokens']:,} tokens, "
        f"final loss {r['final_loss'] if r['final_loss'] is not None else r['train_loss']:.3f}, "
        f"{r['tokens_per_s']:.0f} tokens/s on {r['world_size']} rank(s) (run {result.run_id})",
        highlight=False,
    )


def train(
    ctx: typer.Context,
    start: Annotated[str | None, typer.Option("--from", help="first gold date of the window")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last gold date of the window")] = None,
    objective: Annotated[
        str | None, typer.Option(help="sft, dpo, kto or sft+dpo (default: learn.objective)")
    ] = None,
    num_procs: NumProcsOpt = None,
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
    as_json: JsonOpt = False,
) -> None:
    """Refine the champion on gold datasets (DeepSpeed + TRL) and register it as @challenger."""
    from echo_lib.training.refine import BASELINES, TrainError
    from echo_lib.training.refine import train as run_train
    from echo_lib.world.corpus import CorpusError

    cfg = loaded(ctx).config
    with failing("train failed", TrainError, CorpusError, ValueError, FileNotFoundError):
        result = run_train(
            cfg,
            start=parse_date(start).isoformat() if start else None,
            end=parse_date(end).isoformat() if end else None,
            objective=objective,
            num_procs=num_procs,
            max_steps=max_steps,
            resume=resume,
            control=control,
            baseline=baseline,
            progress=say_dim,
        )
    if printed_json(as_json, dataclasses.asdict(result)):
        return
    for s in result.stages:
        console.print(
            f"  {s['name']}: {s['steps']} steps, {s['rows']:,} rows ({s['replay_rows']:,} replay, "
            f"{s.get('context_rows') or 0:,} context), "
            f"{s['tokens']:,} tokens at {s['tokens_per_s'] or 0:,.0f}/s, final loss {s['final_loss']:.3f}",
            highlight=False,
        )
    alias = f"@{BASELINES[baseline or 'public'][0]}" if (control or baseline) else "@challenger"
    console.print(
        f"registered models:/{cfg.mlflow.registered_model}/{result.version} as {alias} (parent "
        f"v{result.parent_version}, gold {result.dates[0]}..{result.dates[-1]}) in {result.seconds:.0f} s; "
        f"MLflow run {result.run_id}",
        highlight=False,
    )


def train_node(
    ctx: typer.Context,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="exit after this many jobs (default: run until stopped)")
    ] = None,
) -> None:
    """On node 1..N-1 of a no-ssh multi-node run (train.no_ssh, train.node_rank > 0): launch this
    node's ranks for every training job node 0 starts (node 0 runs ``echoctl train``)."""
    from echo_lib.training.launch import TrainingFailed, follow

    cfg = loaded(ctx).config
    with failing("train-node failed", TrainingFailed):
        done = follow(cfg, max_jobs=max_jobs, say=say_dim)
    console.print(f"node {cfg.train.node_rank}: {done} job(s) run", highlight=False)


def calibrate(
    ctx: typer.Context,
    version: Annotated[str, typer.Option(help="the version whose weights get a new show policy")],
    against: Annotated[str, typer.Option(help="the version the policy must beat (its champion)")] = "1",
) -> None:
    """Calibrate a show policy for an existing version's weights and register the pair as a new
    version (no training): what the policy filters, apart from what the model learned."""
    from echo_lib.agent.engine import ModelLoadError
    from echo_lib.training.calibrate import recalibrate

    cfg = loaded(ctx).config
    with failing("calibrate failed", ModelLoadError, ValueError):
        new = recalibrate(cfg, version, against, progress=say_dim)
    console.print(f"registered models:/{cfg.mlflow.registered_model}/{new} (weights of v{version})")
