"""Experiments over the whole loop: ``flywheel`` (Echo against every baseline, round by round)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from echo_lib.ops.cli.common import JsonOpt, console, failing, loaded, parse_date, printed_json, say_dim

DEFAULT_ARMS = "echo,control,naive-accepted,naive-raw,repo,echo+repo,echo-no-policy"


def flywheel(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(help="simulated days, each a full turn of the loop per arm")] = 3,
    arms: Annotated[str, typer.Option(help=f"comma-separated arms (all: {DEFAULT_ARMS})")] = DEFAULT_ARMS,
    seeds: Annotated[
        int, typer.Option(help="independent replicates (world, held-out and training seeds)")
    ] = 1,
    team_repos: Annotated[
        str | None,
        typer.Option("--team-repos", help="comma-separated team repos (default: corpus.team_repos)"),
    ] = None,
    sessions_per_day: Annotated[
        int | None,
        typer.Option("--sessions-per-day", help="simulated sessions a day (default: world.sessions)"),
    ] = None,
    name: Annotated[
        str, typer.Option(help="the experiment's name: its state, MLflow runs and report")
    ] = "default",
    start_date: Annotated[str, typer.Option("--start-date", help="the first simulated day")] = "2026-01-05",
    restart: Annotated[
        bool, typer.Option("--restart", help="discard this experiment's state and sandboxes, start over")
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="where the report and plots go (default: docs/results)"),
    ] = None,
    results_md: Annotated[
        Path | None,
        typer.Option("--results-md", help="also replace the generated flywheel section of this file"),
    ] = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="only regenerate the report from the finished arm-rounds")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run (or resume) the flywheel experiment: every arm from the same v0 through the same simulated
    days at equal compute, each as its own closed loop, measured paired on held-out sessions."""
    from echo_lib.agent.engine import ModelLoadError
    from echo_lib.core.config import ConfigError, with_overrides
    from echo_lib.evaluation.gate import GateError
    from echo_lib.evaluation.heldout import EvaluationError
    from echo_lib.ops.flywheel import FlywheelError, report, run, settings_for
    from echo_lib.training.refine import TrainError
    from echo_lib.world.corpus import CorpusError

    cfg = loaded(ctx).config
    with failing(
        "flywheel failed",
        FlywheelError,
        ConfigError,
        TrainError,
        EvaluationError,
        GateError,
        CorpusError,
        ModelLoadError,
        FileNotFoundError,
    ):
        if team_repos:
            cfg = with_overrides(
                cfg, {"corpus.team_repos": [r.strip() for r in team_repos.split(",") if r.strip()]}
            )
        settings = settings_for(
            cfg,
            name=name,
            arms=[a.strip() for a in arms.split(",") if a.strip()],
            rounds=rounds,
            seeds=seeds,
            sessions_per_day=sessions_per_day,
            start_date=parse_date(start_date).isoformat(),
        )
        if report_only:
            state = report(cfg, settings, report_dir=report_dir, results_md=results_md, say=say_dim)
        else:
            state = run(
                cfg, settings, restart=restart, report_dir=report_dir, results_md=results_md, say=say_dim
            )
    if printed_json(
        as_json, {"name": name, "parent_run_id": state["parent_run_id"], "cells": sorted(state["cells"])}
    ):
        return
    console.print(
        f"flywheel {name}: {len(state['cells'])} arm-round(s) done; MLflow parent run {state['parent_run_id']}"
    )
