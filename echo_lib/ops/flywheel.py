"""``echoctl flywheel``: Echo against the baselines a team would pick instead, round by round.

Every arm starts from the same v0 and lives the same simulated days, in a sandbox of its own (a
lake, a registered model and an MLflow experiment, all named after the experiment and the arm).
Each round, for each arm:

1. **world**: the simulated developers write the day's code against the arm's *current* champion
   (the closed loop: what the model proposes changes what users refine);
2. **nightly**: Spark ingests the day, mines D-1 and D, builds gold for D (as ``echo_nightly``
   does), harvesting what the arm harvests;
3. **train**: the arm's training from its champion, the same steps for every arm (equal compute);
4. **gate**: held-out evaluation against the arm's champion and the promotion gate;
5. **measure**: the arm's champion after the gate, on the same held-out sessions as every other
   arm's (cached by weights: a model is never measured twice on the same sessions).

An arm-round is the unit of work and of resume: each step is recorded in
``var/flywheel/<name>/state.json`` as it finishes, so a killed experiment continues at the step it
stopped in (an interrupted training resumes from its checkpoint). Rounds go one at a time across
arms, so a stopped experiment still compares arms at the same round. The experiment is one MLflow
experiment (``<mlflow.experiment>-flywheel``): a parent run per experiment, a child run per
arm-round with its measurements and links to the arm's training run and model version.

Spark runs in this process (one session for the whole experiment, ``spark.master`` from config):
the jobs' own library functions, without a JVM start per job and arm-round.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from echo_lib.core.config import EchoConfig, with_overrides

Say = Callable[[str], None]


class FlywheelError(RuntimeError):
    """The experiment cannot start or continue (the message says why and what to do)."""


@dataclass(frozen=True)
class Arm:
    """One way a team could improve its agent, run as its own closed loop."""

    name: str
    about: str
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys the arm changes
    baseline: str | None = None  # refine.BASELINES data instead of gold


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("echo", "refinements (settled code) and the learned show policy"),
        Arm(
            "echo-no-policy",
            "refinements, shown by a confidence threshold instead of the learned policy",
            {"calibration.policy": "confidence"},
        ),
        Arm(
            "control", "public code only, the same compute (the 'more steps' explanation)", baseline="public"
        ),
        Arm(
            "naive-accepted",
            "only proposals users accepted unchanged (what simple harvesting keeps)",
            {"dataset.harvest": "accepted"},
        ),
        Arm(
            "naive-raw",
            "the logged text as it first arrived (mid-edit snapshots, no denoising or settled state)",
            {"dataset.harvest": "raw"},
        ),
        Arm(
            "repo",
            "fine-tuning on the team repos' own files (what self-hosted assistants offer)",
            baseline="team-experience",
        ),
        Arm(
            "echo-ul",
            "refinements, and an unlikelihood term on the first token where a rejected proposal left "
            "what the user kept (the on-policy negative, in the same steps)",
            {"learn.unlikelihood": 1.0},
        ),
        Arm(
            "echo+repo",
            "half refinement-weighted session blocks, half the team's own files, at the same density as repo",
            {"learn.team_files_share": 0.5},
        ),
    )
}
# the paired comparisons the report makes (left - right), when both arms ran
COMPARISONS = (
    ("echo", "control"),
    ("echo", "naive-accepted"),
    ("echo", "naive-raw"),
    ("echo", "echo-no-policy"),
    ("echo-ul", "echo"),
    ("echo-ul", "naive-accepted"),
    ("echo+repo", "repo"),
    ("echo", "repo"),
)
STEPS = ("world", "nightly", "train", "gate", "measure")
# per-session counts of the requests whose held-out line also stands in experience files
SEEN_KEYS = ("requests_seen", "shown_seen", "accepted_seen", "retained_chars_seen")
# The gate promotes a challenger that beats the champion on the evaluation's held-out sessions; a
# champion measured again on those sessions would be scored on the sample that selected it. The
# report measures every champion on other held-out sessions (the same files, other developers).
MEASURE_SEED_OFFSET = 7919


@dataclass(frozen=True)
class Settings:
    """What an experiment is; a resumed experiment must be given the same (or none)."""

    name: str
    arms: list[str]
    rounds: int
    seeds: int
    sessions_per_day: int
    start_date: str
    steps: int  # optimizer steps per arm-round, every arm alike
    heldout_sessions: int
    measure_seed: int  # the report's held-out sessions: never the gate's, which pick the champion
    team_repos: list[str]
    config_sha256: str  # every setting that shapes a result: a resume under other rules is refused

    def days(self) -> list[str]:
        first = date.fromisoformat(self.start_date)
        return [(first + timedelta(days=k)).isoformat() for k in range(self.rounds)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.replace("+", "-plus-")).strip("-")


def settings_for(
    cfg: EchoConfig,
    *,
    name: str,
    arms: list[str],
    rounds: int,
    seeds: int,
    sessions_per_day: int | None,
    start_date: str,
) -> Settings:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise FlywheelError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if len(set(arms)) != len(arms) or not arms:
        raise FlywheelError("give each arm once, at least one")
    if rounds < 1 or seeds < 1:
        raise FlywheelError("--rounds and --seeds must be at least 1")
    if cfg.learn.objective != "sft":
        raise FlywheelError(
            f"learn.objective is {cfg.learn.objective}: every arm trains sft (the code baselines have no "
            "preference pairs, the accepted harvest has no rejected code, and a two-stage objective would "
            "double the steps), so the comparison needs learn.objective=sft"
        )
    if "echo-ul" in arms and cfg.learn.recipe == "rows":
        raise FlywheelError(
            "echo-ul's unlikelihood term lives in the blocks recipe: it needs learn.recipe=blocks"
        )
    if "echo+repo" in arms and cfg.learn.recipe == "rows" and not cfg.learn.context_loss:
        raise FlywheelError(
            "echo+repo replaces context blocks with team files: it needs learn.context_loss=true"
        )
    date.fromisoformat(start_date)
    return Settings(
        name=name,
        arms=list(arms),
        rounds=rounds,
        seeds=seeds,
        sessions_per_day=sessions_per_day or cfg.world.sessions,
        start_date=start_date,
        steps=cfg.learn.max_steps or cfg.learn.max_steps_cap,
        heldout_sessions=cfg.world.acceptance_sessions,
        measure_seed=cfg.world.acceptance_seed + MEASURE_SEED_OFFSET,
        team_repos=list(cfg.corpus.team_repos),
        config_sha256=result_config_digest(cfg),
    )


# where only the machinery differs (paths, ports, Spark and MLflow wiring), results do not
MACHINERY = {
    "train": ("checkpoint_dir", "hostfile", "master_port", "torch_threads"),
    "engine": ("torch_threads",),
}


def result_config_digest(cfg: EchoConfig) -> str:
    """SHA-256 of the settings that shape what an arm learns and how it is judged."""
    import hashlib

    sections = ("world", "corpus", "engine", "dataset", "learn", "calibration", "promotion", "train")
    shaping = {
        name: {
            k: v
            for k, v in getattr(cfg, name).model_dump(mode="json").items()
            if k not in MACHINERY.get(name, ())
        }
        for name in sections
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def root(cfg: EchoConfig, name: str) -> Path:
    return cfg.var_path / "flywheel" / slug(name)


def arm_config(cfg: EchoConfig, settings: Settings, arm: str, seed: int) -> EchoConfig:
    """The arm's sandbox: its own lake, registered model and MLflow experiment; the same world,
    evaluation and training budget as every other arm (seed k shifts every seed by k)."""
    tag = f"{slug(settings.name)}-{slug(arm)}-s{seed}"
    return with_overrides(
        cfg,
        {
            "lake.uri": str(root(cfg, settings.name) / "lakes" / f"{slug(arm)}-s{seed}"),
            "mlflow.registered_model": f"{cfg.mlflow.registered_model}-{tag}",
            "mlflow.experiment": f"{cfg.mlflow.experiment}-flywheel-{tag}",
            "promotion.enabled": True,
            "world.seed": cfg.world.seed + seed,
            "world.acceptance_seed": cfg.world.acceptance_seed + seed,
            "learn.seed": cfg.learn.seed + seed,
            "learn.max_steps": settings.steps,
            **ARMS[arm].overrides,
        },
    )


# ---- state --------------------------------------------------------------------------------------


class State:
    """``state.json``: the settings, v0, the parent run and every arm-round's finished steps."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def open(cls, path: Path, settings: Settings, *, restart: bool) -> State:
        if path.is_file() and not restart:
            data = json.loads(path.read_text())
            if data["settings"] != asdict(settings):
                changed = sorted(k for k, v in asdict(settings).items() if data["settings"].get(k) != v)
                changed = [
                    "a setting of world, corpus, engine, dataset, learn, calibration, promotion or train"
                    if k == "config_sha256"
                    else k
                    for k in changed
                ]
                raise FlywheelError(
                    f"{path} holds experiment {settings.name!r} with other settings ({', '.join(changed)} "
                    "differ): resume it with the same options, give another --name, or --restart"
                )
            return cls(path, data)
        return cls(path, {"settings": asdict(settings), "cells": {}, "v0": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def cell(self, seed: int, arm: str, round_: int) -> dict[str, Any]:
        return self.data["cells"].setdefault(f"s{seed}/{arm}/r{round_}", {"steps": {}})


# ---- the experiment -----------------------------------------------------------------------------


def run(
    cfg: EchoConfig,
    settings: Settings,
    *,
    restart: bool = False,
    report_dir: Path | None = None,
    results_md: Path | None = None,
    say: Say = print,
) -> dict[str, Any]:
    """Run (or resume) the experiment; write the report; return the state."""
    from echo_lib.core import registry
    from echo_lib.core.tracking import configure_mlflow

    began = time.perf_counter()
    base = root(cfg, settings.name)
    client = registry.client(cfg)
    arms = [arm_config(cfg, settings, arm, seed) for seed in range(settings.seeds) for arm in settings.arms]
    if restart:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        for acfg in arms:  # an arm starts again from v0: its old versions go with its sandbox
            if client.search_registered_models(f"name = '{acfg.mlflow.registered_model}'"):
                client.delete_registered_model(acfg.mlflow.registered_model)
            train_resume_pointer(acfg).unlink(missing_ok=True)
    elif not (base / "state.json").is_file():
        stale = [
            a.mlflow.registered_model
            for a in arms
            if client.search_registered_models(f"name = '{a.mlflow.registered_model}'")
        ]
        if stale:
            raise FlywheelError(
                f"registered models of an earlier experiment named {settings.name!r} exist ({', '.join(stale)}) "
                "but its state is gone: start over with --restart, or give another --name"
            )
    state = State.open(base / "state.json", settings, restart=restart)
    experiment_cfg = with_overrides(cfg, {"mlflow.experiment": f"{cfg.mlflow.experiment}-flywheel"})
    experiment_id = configure_mlflow(experiment_cfg)
    if not state.data.get("parent_run_id"):
        parent = client.create_run(
            experiment_id,
            run_name=settings.name,
            tags={"echo.stage": "flywheel", "echo.flywheel": settings.name},
        )
        state.data["parent_run_id"] = parent.info.run_id
        for key, value in asdict(settings).items():
            client.log_param(parent.info.run_id, key, json.dumps(value) if isinstance(value, list) else value)
        state.save()
    parent_id = state.data["parent_run_id"]
    client.update_run(parent_id, status="RUNNING")
    v0 = state.data["v0"] or v0_version(cfg)
    state.data["v0"] = v0
    state.save()
    say(
        f"flywheel {settings.name}: {len(settings.arms)} arm(s) x {settings.rounds} round(s) x "
        f"{settings.seeds} seed(s) from v0 = {cfg.mlflow.registered_model} v{v0['version']}; "
        f"{settings.sessions_per_day} sessions a day, {settings.steps} steps a round, "
        f"{settings.heldout_sessions} held-out sessions; state in {state.path}"
    )
    nightly = Nightly(cfg)
    finished = False
    try:
        for seed in range(settings.seeds):
            for arm in settings.arms:
                seed_arm(arm_config(cfg, settings, arm, seed), v0)
            measured = state.data.setdefault("seeds", {}).setdefault(str(seed), {})
            if "v0_measure" not in measured:  # round 0: v0 on this seed's held-out sessions
                acfg = arm_config(cfg, settings, settings.arms[0], seed)
                measured["v0_measure"] = measure(acfg, settings, seed, "1", say)
                state.save()
            for r, day in enumerate(settings.days(), 1):
                for arm in settings.arms:
                    acfg = arm_config(cfg, settings, arm, seed)
                    cell = state.cell(seed, arm, r)
                    if cell.get("child_run_id"):
                        continue
                    where = f"seed {seed} round {r}/{settings.rounds} {day} {arm}"
                    run_arm_round(acfg, settings, state, cell, ARMS[arm], seed, day, nightly, where, say)
                    cell["child_run_id"] = log_child(
                        client, experiment_id, parent_id, settings, seed, arm, r, cell
                    )
                    state.save()
        finished = True
    finally:
        nightly.stop()
        if not finished:  # a rerun continues it; the parent run says it was interrupted
            client.set_terminated(parent_id, "KILLED")
    outputs = write_report(cfg, state.data, report_dir, results_md)
    client.set_tag(parent_id, "echo.flywheel.seconds_this_run", f"{time.perf_counter() - began:.0f}")
    client.set_terminated(parent_id, "FINISHED")
    say(
        f"flywheel {settings.name}: done in {time.perf_counter() - began:.0f} s; report: {', '.join(map(str, outputs))}"
    )
    return state.data


def write_report(
    cfg: EchoConfig, data: dict[str, Any], report_dir: Path | None, results_md: Path | None
) -> list[Path]:
    """The report files, also logged to the parent MLflow run."""
    from echo_lib.core import registry
    from echo_lib.ops import flywheel_report

    outputs = flywheel_report.write(data, report_dir or (cfg.home / "docs" / "results"), results_md)
    for path in outputs:
        registry.client(cfg).log_artifact(data["parent_run_id"], str(path), "report")
    return outputs


def report(
    cfg: EchoConfig,
    settings: Settings,
    *,
    report_dir: Path | None = None,
    results_md: Path | None = None,
    say: Say = print,
) -> dict[str, Any]:
    """Regenerate the report of an experiment from its state (finished arm-rounds only)."""
    path = root(cfg, settings.name) / "state.json"
    if not path.is_file():
        raise FlywheelError(f"no experiment {settings.name!r} here ({path} is missing)")
    data = json.loads(path.read_text())
    outputs = write_report(cfg, data, report_dir, results_md)
    say(f"flywheel {settings.name}: report regenerated: {', '.join(map(str, outputs))}")
    return data


def v0_version(cfg: EchoConfig) -> dict[str, Any]:
    """The newest bootstrapped version in the configured registry: every arm starts from it."""
    from mlflow.exceptions import MlflowException

    from echo_lib.core import registry

    name = cfg.mlflow.registered_model
    try:
        versions = registry.client(cfg).search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if registry.is_not_found(exc):
            versions = []
        else:
            raise
    boot = [v for v in versions if v.tags.get("echo.stage") == "bootstrap"]
    if not boot:
        raise FlywheelError(f"no bootstrapped v0 in {name}: run `echoctl bootstrap` first")
    mv = max(boot, key=lambda v: int(v.version))
    return {
        "name": name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": dict(mv.tags),
    }


def seed_arm(acfg: EchoConfig, v0: dict[str, Any]) -> None:
    """Register v0 as version 1 and @champion of the arm's model (once)."""
    from echo_lib.core import registry

    if registry.version_by_alias(acfg, registry.CHAMPION) is not None:
        return
    client, name = registry.client(acfg), acfg.mlflow.registered_model
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(
            name, description=f"a flywheel arm; v1 is {v0['name']} v{v0['version']}"
        )
    if not client.search_model_versions(f"name = '{name}'"):
        client.create_model_version(
            name,
            v0["source"],
            run_id=v0["run_id"],
            tags=v0["tags"],
            description=f"v0 of this arm: {v0['name']} v{v0['version']}",
        )
    client.set_registered_model_alias(name, registry.CHAMPION, "1")


def run_arm_round(
    acfg: EchoConfig,
    settings: Settings,
    state: State,
    cell: dict[str, Any],
    arm: Arm,
    seed: int,
    day: str,
    nightly: Nightly,
    where: str,
    say: Say,
) -> None:
    steps = cell["steps"]
    cell.update(day=day)
    for step in STEPS:
        if step in steps:
            continue
        began = time.perf_counter()
        say(f"[{where}] {step} ...")
        if step == "world":
            steps[step] = world(acfg, day, settings.sessions_per_day, where, say)
        elif step == "nightly":
            steps[step] = nightly.run(acfg, day, say=say)
        elif step == "train":
            steps[step] = train(acfg, arm, day, say)
        elif step == "gate":
            steps[step] = gate(acfg, steps["train"], say)
        else:
            steps[step] = measure(acfg, settings, seed, steps["gate"]["champion_after"], say)
        steps[step]["seconds"] = round(time.perf_counter() - began, 1)
        state.save()
        say(f"[{where}] {step}: {summary_line(step, steps[step])} ({steps[step]['seconds']:.0f} s)")


def summary_line(step: str, result: dict[str, Any]) -> str:
    if step == "world":
        return (
            f"{result['sessions']} sessions, {result['events']:,} events, live acceptance "
            f"{result['acceptance_rate']:.1%} (v{result['model_version']})"
        )
    if step == "nightly":
        return f"{result['refinements']:,} refinements mined, gold sft {result['gold_rows']['sft']:,} rows"
    if step == "train":
        return f"v{result['version']}, {result['steps']} steps, {result['loss_tokens']:,} loss tokens"
    if step == "gate":
        return f"v{result['version']} {result['verdict']}; champion v{result['champion_after']}"
    return f"champion v{result['version']}: acceptance {result['acceptance'][0]:.2%}, retained/request {result['retained'][0]:.3f}"


def world(acfg: EchoConfig, day: str, sessions: int, where: str, say: Say) -> dict[str, Any]:
    from echo_lib.world.runner import DAY_SUMMARY, ProgressLines, simulate_day

    lines = ProgressLines(say, f"[{where}] world")
    summary = simulate_day(
        acfg, date.fromisoformat(day), sessions=sessions, on_plan=lines.plan, progress=lines
    )
    return {k: summary[k] for k in DAY_SUMMARY}


class Nightly:
    """``echo_nightly``'s Spark steps in this process, one SparkSession for the experiment."""

    def __init__(self, cfg: EchoConfig) -> None:
        self.cfg, self._spark, self._heldout = cfg, None, None

    def run(self, acfg: EchoConfig, day: str, *, say: Say) -> dict[str, Any]:
        from echo_lib.core.lake import read_partition_manifest
        from echo_lib.core.spark import get_session, stage_progress
        from echo_lib.mining.dataset import log_manifest, run_build
        from echo_lib.mining.ingest import Limits, run_ingest
        from echo_lib.mining.refinements import run_mine
        from echo_lib.world import corpus

        if self._spark is None:
            self._spark = get_session(self.cfg, "echo-flywheel")
            self._heldout = [
                f.text for f in corpus.scan(corpus.team_repos(self.cfg), self.cfg).select("heldout")
            ]
        spark, lake = self._spark, acfg.lake_uri
        as_arrived = acfg.dataset.harvest == "raw"  # the raw harvest keeps the text as it arrived
        previous = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
        with stage_progress(spark, say):
            limits = Limits(acfg.ingest.max_line_bytes, acfg.ingest.max_file_bytes)
            ingested = run_ingest(spark, lake, day, limits)
            if read_partition_manifest(spark, lake, "bronze/events", previous) is not None:
                run_mine(spark, lake, previous, as_arrived=as_arrived)  # D-1 is complete now
            mined = run_mine(spark, lake, day, as_arrived=as_arrived)
            built = run_build(
                spark, lake, [previous, day], self._heldout, settings=acfg.dataset, out_dt=day, say=say
            )
        log_manifest(acfg, built)
        spark.catalog.clearCache()  # one session serves every arm-round: keep none of this one's
        return {
            "lines_read": ingested["lines_read"],
            "quarantined": ingested["quarantined"],
            "refinements": mined["refinements"],
            "by_outcome": mined["by_outcome"],
            "gold_rows": {name: d["rows"] for name, d in built["datasets"].items()},
            "funnel": built["funnel"],
        }

    def stop(self) -> None:
        if self._spark is not None:
            self._spark.stop()
            self._spark = None


def train_resume_pointer(acfg: EchoConfig) -> Path:
    """The arm's own resume pointer: a rerun resumes the arm's interrupted training, no other."""
    from echo_lib.training.refine import resume_pointer

    return resume_pointer(acfg, f"flywheel-{acfg.mlflow.registered_model}")


def train(acfg: EchoConfig, arm: Arm, day: str, say: Say) -> dict[str, Any]:
    from echo_lib.training.refine import NoTrainingData
    from echo_lib.training.refine import train as run_train

    owner = f"flywheel-{acfg.mlflow.registered_model}"
    resume = train_resume_pointer(acfg).is_file()
    first = (date.fromisoformat(day) - timedelta(days=acfg.learn.window_days - 1)).isoformat()
    try:
        result = run_train(
            acfg,
            start=first,
            end=day,
            baseline=arm.baseline,
            as_challenger=True,
            owner=owner,
            resume=resume,
            progress=say,
        )
    except NoTrainingData as exc:  # a recorded outcome, not a failure: the champion stays
        return {"version": None, "no_data": str(exc), "steps": 0, "rows": 0, "loss_tokens": 0}
    return {
        "version": result.version,
        "run_id": result.run_id,
        "parent_version": result.parent_version,
        "dates": result.dates,
        "steps": sum(s["steps"] for s in result.stages),
        "rows": sum(s["rows"] for s in result.stages),
        "loss_tokens": sum(s["loss_tokens"] or 0 for s in result.stages),
        "team_loss_tokens": sum(s.get("team_loss_tokens") or 0 for s in result.stages),
        "calibration": calibration_split(acfg, result.run_id),
        "final_loss": result.stages[-1]["final_loss"],
    }


def calibration_split(acfg: EchoConfig, run_id: str) -> dict[str, float]:
    """What the trained model's calibrated policy gave on the canary (calibration-split) sessions:
    the numbers a screen may select by (the held-out sessions never choose a recipe)."""
    from echo_lib.core import registry

    prefix = "calibration.chosen."
    metrics = registry.client(acfg).get_run(run_id).data.metrics
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def gate(acfg: EchoConfig, trained: dict[str, Any], say: Say) -> dict[str, Any]:
    from echo_lib.core import registry
    from echo_lib.evaluation.gate import promote
    from echo_lib.evaluation.heldout import evaluate

    champion = str(registry.version_by_alias(acfg, registry.CHAMPION).version)
    version = trained["version"]
    if version is None:  # nothing to learn from this round
        return {
            "version": None,
            "verdict": "no-data",
            "reasons": [trained["no_data"]],
            "promoted": False,
            "champion_before": champion,
            "champion_after": champion,
        }
    if champion == version:  # promoted before a kill: read the verdict back, do not judge again
        mv = registry.client(acfg).get_model_version(acfg.mlflow.registered_model, version)
        return {
            "version": version,
            "verdict": mv.tags.get("echo.gate.verdict", "pass"),
            "reasons": [mv.tags.get("echo.gate.reasons", "")],
            "promoted": True,
            "champion_before": trained["parent_version"],
            "champion_after": version,
        }
    evaluate(acfg, challenger=version, progress=say)
    outcome = promote(acfg, version=version)
    keep = ("version", "verdict", "reasons", "promoted", "champion_before", "champion_after")
    return {k: outcome[k] for k in keep}


def measure(acfg: EchoConfig, settings: Settings, seed: int, version: str, say: Say) -> dict[str, Any]:
    """A version's measurement on the report's held-out sessions (once per model: cached)."""
    from echo_lib.core import registry
    from echo_lib.core.stats import bootstrap_ratio
    from echo_lib.evaluation.heldout import online_run
    from echo_lib.world.runner import load_engine

    name = acfg.mlflow.registered_model
    mv = registry.client(acfg).get_model_version(name, version)
    engine = load_engine(acfg, f"models:/{name}/{version}")
    online = online_run(
        acfg,
        mv,
        engine,
        sessions=settings.heldout_sessions,
        seed=settings.measure_seed + seed,
        label=name,
        progress=say,
    )
    sessions = online["per_session"]
    shown = bootstrap_ratio([s["shown"] for s in sessions], [s["requests"] for s in sessions])
    keep = ("session_id", "requests", "shown", "accepted", "retained_chars", *SEEN_KEYS)
    return {
        "version": str(version),
        "acceptance": [online["acceptance_rate"], online["ci_low"], online["ci_high"]],
        "retained": [online["retained_per_request"], online["retained_ci_low"], online["retained_ci_high"]],
        "shown_rate": [shown["value"], shown["ci_low"], shown["ci_high"]],
        "per_session": [{k: s[k] for k in keep if k in s} for s in sessions],
    }


def log_child(
    client,
    experiment_id: str,
    parent_id: str,
    settings: Settings,
    seed: int,
    arm: str,
    r: int,
    cell: dict[str, Any],
) -> str:
    """The arm-round's MLflow child run: what it measured and where its pieces are."""
    steps = cell["steps"]
    child = client.create_run(
        experiment_id,
        run_name=f"{arm} r{r} s{seed}",
        tags={
            "mlflow.parentRunId": parent_id,
            "echo.stage": "flywheel-arm-round",
            "echo.flywheel": settings.name,
            "echo.arm": arm,
            "echo.round": str(r),
            "echo.seed": str(seed),
            "echo.day": cell["day"],
            "echo.train_run_id": steps["train"].get("run_id") or "none",
            "echo.challenger": steps["train"]["version"] or "none",
            "echo.gate.verdict": steps["gate"]["verdict"],
            "echo.champion": steps["measure"]["version"],
        },
    )
    run_id = child.info.run_id
    m = steps["measure"]
    metrics = {
        "acceptance": m["acceptance"][0],
        "acceptance_ci_low": m["acceptance"][1],
        "acceptance_ci_high": m["acceptance"][2],
        "retained_per_request": m["retained"][0],
        "retained_ci_low": m["retained"][1],
        "retained_ci_high": m["retained"][2],
        "shown_rate": m["shown_rate"][0],
        "world_live_acceptance": steps["world"]["acceptance_rate"],
        "world_events": steps["world"]["events"],
        "refinements_mined": steps["nightly"]["refinements"],
        "gold_sft_rows": steps["nightly"]["gold_rows"]["sft"],
        "train_steps": steps["train"]["steps"],
        "train_loss_tokens": steps["train"]["loss_tokens"],
        "train_final_loss": steps["train"].get("final_loss"),
        "promoted": float(steps["gate"]["promoted"]),
    }
    metrics.update({f"seconds_{s}": steps[s]["seconds"] for s in STEPS})
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run_id, key, float(value), step=r)
    client.set_terminated(run_id, "FINISHED")
    return run_id
