"""The world's two entry points: write a day of telemetry, or measure acceptance without writing."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from echo_lib.core.config import EchoConfig
from echo_lib.world import corpus
from echo_lib.world.behaviour import BehaviourParams
from echo_lib.world.delivery import DeliveryParams, write_day
from echo_lib.world.simulate import acceptance_summary, per_session, plan_day, run_sessions

Progress = Callable[[int, int], None]  # (sessions finished, their events)


class ProgressLines:
    """World progress for logs, where a live bar cannot draw: ``label: done/total sessions,
    events, events/s`` at most every ``every_s`` seconds and when the last session ends.

    Pass ``plan`` as ``on_plan`` (the total is the sessions actually planned, and the clock starts
    there, after the model has loaded) and the object itself as ``progress``.
    """

    def __init__(self, say: Callable[[str], None], label: str, every_s: float = 30.0):
        self.say, self.label, self.every_s = say, label, every_s
        self.total = self.sessions = self.events = 0
        self.start = self.last = time.perf_counter()

    def plan(self, total: int) -> None:
        self.total = total
        self.start = self.last = time.perf_counter()

    def __call__(self, sessions: int, events: int) -> None:
        self.sessions += sessions
        self.events += events
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.sessions >= self.total:
            self.last = now
            rate = self.events / (now - self.start) if now > self.start else 0.0
            self.say(
                f"{self.label}: {self.sessions}/{self.total} sessions, {self.events:,} events, {rate:,.0f} events/s"
            )


def load_engine(cfg: EchoConfig, model_uri: str | None = None, *, show_all: bool = False):
    """The engine serving ``model_uri`` (default: @champion) with the configured settings; with
    ``show_all`` every non-blank proposal is shown (canary traffic for calibration)."""
    from echo_lib.agent.engine import CompletionEngine, EngineSettings
    from echo_lib.core import registry

    e = cfg.engine
    settings = EngineSettings(
        max_new_tokens=e.max_new_tokens,
        show_threshold=0.0 if show_all else e.show_threshold,
        use_model_policy=not show_all and e.show_policy == "model",
        batch_size=e.batch_size,
        torch_threads=e.torch_threads,
        prompt_window_step=e.prompt_window_step,
        prefix_cache=e.prefix_cache,
        prefix_cache_mb=e.prefix_cache_mb,
        draft_tokens=e.draft_tokens,
        step_tokens=e.step_tokens,
    )
    return CompletionEngine.load(
        model_uri or registry.model_uri(cfg),
        settings,
        tracking_uri=cfg.mlflow_tracking_uri,
        cache_dir=cfg.var_path / "cache" / "models",
    )


def world_files(
    cfg: EchoConfig, split: str, corpus_dirs: Sequence[str] | None = None
) -> list[corpus.SourceFile]:
    if split not in ("experience", "heldout", "calibration"):
        raise ValueError(f"split must be experience, heldout or calibration, got {split!r}")
    files = corpus.scan(corpus.team_repos(cfg, corpus_dirs), cfg).select(split)  # type: ignore[arg-type]
    if not files:
        hint = (
            " (raise corpus.calibration_percent, or set calibration.enabled=false to skip calibration)"
            if split == "calibration"
            else ""
        )
        raise ValueError(f"no {split} files in the team repos{hint}")
    return files


# what a day's summary says in a task log or an experiment's state (the rest is detail)
DAY_SUMMARY = (
    "date",
    "sessions",
    "requests",
    "shown",
    "accepted",
    "acceptance_rate",
    "retained_per_request",
    "events",
    "lines",
    "model_version",
)


def simulate_day(
    cfg: EchoConfig,
    day: date,
    *,
    sessions: int | None = None,
    split: str = "experience",
    corpus_dirs: Sequence[str] | None = None,
    model_uri: str | None = None,
    seed: int | None = None,
    engine=None,
    behaviour: BehaviourParams | None = None,
    delivery: DeliveryParams | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Simulate one day with the served model and land its telemetry in the lake."""
    behaviour, delivery = behaviour or BehaviourParams(), delivery or DeliveryParams()
    seed = cfg.world.seed if seed is None else seed
    engine = engine or load_engine(cfg, model_uri)
    specs = plan_day(
        world_files(cfg, split, corpus_dirs), day, sessions or cfg.world.sessions, seed, behaviour, delivery
    )
    if on_plan:
        on_plan(len(specs))
    start = time.perf_counter()
    results = run_sessions(specs, engine, behaviour, concurrency=cfg.world.concurrency, progress=progress)
    seconds = time.perf_counter() - start
    landed = write_day(cfg.lake_uri, day, [r.events for r in results], delivery, seed)
    summary = acceptance_summary(results)
    summary.update(
        date=day.isoformat(),
        split=split,
        seed=seed,
        model_version=engine.model_version,
        seconds=seconds,
        events_per_s=summary["events"] / seconds if seconds else 0.0,
        **landed,
    )
    return summary


def measure_acceptance(
    cfg: EchoConfig,
    *,
    model_uri: str | None = None,
    split: str = "heldout",
    corpus_dirs: Sequence[str] | None = None,
    sessions: int | None = None,
    seed: int | None = None,
    engine=None,
    behaviour: BehaviourParams | None = None,
    log_to_mlflow: bool = True,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
    keep_results: bool = False,
) -> dict[str, Any]:
    """Run the world on (by default) held-out code without writing the lake; report acceptance.

    With ``keep_results`` the summary also carries the sessions themselves under ``"results"``
    (events and ground truth), for offline evaluation on the same traffic.

    The sessions depend only on the seed and the corpus, so two models measured with the same
    seed face the same developers writing the same code: the comparison is paired.
    """
    behaviour = behaviour or BehaviourParams()
    seed = cfg.world.acceptance_seed if seed is None else seed
    engine = engine or load_engine(cfg, model_uri)
    # the acceptance day is a fixed label: sessions must not change with the calendar
    specs = plan_day(
        world_files(cfg, split, corpus_dirs),
        date(2000, 1, 1),
        sessions or cfg.world.acceptance_sessions,
        seed,
        behaviour,
        DeliveryParams.none(),
    )
    if on_plan:
        on_plan(len(specs))
    start = time.perf_counter()
    results = run_sessions(specs, engine, behaviour, concurrency=cfg.world.concurrency, progress=progress)
    summary = acceptance_summary(results)
    summary.update(
        split=split, seed=seed, model_version=engine.model_version, seconds=time.perf_counter() - start
    )
    # held-out code that also stands in experience files (shared idioms): reported apart
    seen = (
        corpus.line_set(f.text for f in world_files(cfg, "experience", corpus_dirs))
        if split == "heldout"
        else None
    )
    summary["per_session"] = per_session(results, seen)
    if log_to_mlflow:
        summary["mlflow_run_id"] = _log_acceptance(cfg, summary)
    if keep_results:
        summary["results"] = results
    return summary


def _log_acceptance(cfg: EchoConfig, summary: dict[str, Any]) -> str:
    import json
    import tempfile

    import mlflow

    from echo_lib.core.tracking import configure_mlflow

    experiment_id = configure_mlflow(cfg)
    tags = {
        "echo.stage": "acceptance",
        "echo.model_version": summary["model_version"],
        "echo.split": summary["split"],
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"acceptance-{summary['split']}", tags=tags
    ) as run:
        mlflow.log_params(
            {"seed": summary["seed"], "sessions": summary["sessions"], "split": summary["split"]}
        )
        mlflow.log_metrics(
            {
                k: float(summary[k])
                for k in (
                    "acceptance_rate",
                    "ci_low",
                    "ci_high",
                    "shown",
                    "accepted",
                    "requests",
                    "shown_per_trigger",
                    "accepted_retained_chars",
                    "retained_per_request",
                    "retained_ci_low",
                    "retained_ci_high",
                )
            }
        )
        mlflow.log_metrics({f"outcome_{k}": float(v) for k, v in summary["outcomes"].items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "acceptance.json"
            path.write_text(json.dumps(summary, indent=2, default=str))
            mlflow.log_artifact(str(path))
    return run.info.run_id
