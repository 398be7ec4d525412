"""The flywheel experiment: arms in sandboxes of their own, the report's arithmetic, and a 2-round,
2-arm experiment on the tiny preset end to end, killed mid-training and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echo_lib.core.config import load_config
from echo_lib.ops import flywheel, flywheel_report
from tests.conftest import copy_var, echoctl_env


def settings(**overrides) -> flywheel.Settings:
    cfg = load_config().config
    kwargs = dict(
        name="t", arms=["echo", "control"], rounds=2, seeds=1, sessions_per_day=8, start_date="2026-01-05"
    )
    return flywheel.settings_for(cfg, **{**kwargs, **overrides})


def test_each_arm_has_its_own_sandbox_and_the_same_budget() -> None:
    cfg = load_config().config
    s = settings(arms=list(flywheel.ARMS))
    configs = {arm: flywheel.arm_config(cfg, s, arm, 0) for arm in s.arms}
    for attribute in ("lake_uri", "mlflow_tracking_uri"):
        values = {getattr(c, attribute) for c in configs.values()}
        assert len(values) == (len(configs) if attribute == "lake_uri" else 1)  # one store, many lakes
    assert len({c.mlflow.registered_model for c in configs.values()}) == len(configs)
    assert {c.learn.max_steps for c in configs.values()} == {cfg.learn.max_steps_cap}  # equal compute
    assert {c.world.seed for c in configs.values()} == {cfg.world.seed}  # the same simulated days
    assert configs["naive-raw"].dataset.harvest == "raw"  # mining keeps the first snapshot
    assert configs["naive-accepted"].dataset.harvest == "accepted"
    assert configs["echo-no-policy"].calibration.policy == "confidence"
    assert configs["echo"].calibration.policy == configs["control"].calibration.policy == "logistic"
    assert configs["echo+repo"].learn.team_files_share == 0.5
    # a second seed is an independent replicate: other days, other held-out sessions
    other = flywheel.arm_config(cfg, s, "echo", 1)
    assert other.world.seed != configs["echo"].world.seed
    assert other.world.acceptance_seed != configs["echo"].world.acceptance_seed
    assert other.lake_uri != configs["echo"].lake_uri
    # the report's sessions are never the ones the gate judged on
    assert s.measure_seed != cfg.world.acceptance_seed


def test_bad_experiments_are_refused_with_the_reason() -> None:
    with pytest.raises(flywheel.FlywheelError, match="unknown arm"):
        settings(arms=["echo", "magic"])
    with pytest.raises(flywheel.FlywheelError, match="learn.objective=sft"):
        flywheel.settings_for(
            load_config(overrides={"learn.objective": "dpo"}).config,
            name="t",
            arms=["echo", "control"],
            rounds=1,
            seeds=1,
            sessions_per_day=None,
            start_date="2026-01-05",
        )


def test_a_resume_under_other_rules_is_refused(tmp_path: Path) -> None:
    first = settings()
    flywheel.State.open(tmp_path / "state.json", first, restart=False).save()
    assert flywheel.State.open(tmp_path / "state.json", first, restart=False).data["settings"]["name"] == "t"
    changed = flywheel.settings_for(
        load_config(overrides={"learn.learning_rate": 1e-3}).config,
        name="t",
        arms=["echo", "control"],
        rounds=2,
        seeds=1,
        sessions_per_day=8,
        start_date="2026-01-05",
    )
    with pytest.raises(flywheel.FlywheelError, match="a setting of world, corpus"):
        flywheel.State.open(tmp_path / "state.json", changed, restart=False)
    # the machinery may change between runs (another checkpoint folder, more inference threads)
    moved = load_config(overrides={"train.checkpoint_dir": str(tmp_path), "engine.torch_threads": 1}).config
    assert flywheel.result_config_digest(moved) == first.config_sha256


def test_an_orphaned_sandbox_is_not_resumed_silently(var_dir: Path) -> None:
    """Arms whose state file is gone would start from their old champion, not v0: refuse."""
    from echo_lib.core import registry

    cfg = load_config().config
    s = settings()
    name = flywheel.arm_config(cfg, s, "control", 0).mlflow.registered_model
    registry.client(cfg).create_registered_model(name)
    with pytest.raises(flywheel.FlywheelError, match="--restart"):
        flywheel.run(cfg, s)
    assert not (flywheel.root(cfg, s.name) / "state.json").exists()


def measurement(accepted: list[int], shown: list[int], retained: list[int]) -> dict:
    sessions = [
        {
            "session_id": f"x{i}",
            "requests": 10,
            "shown": s,
            "accepted": a,
            "retained_chars": r,
            # the first 4 requests' lines also stand in experience files; they got every acceptance
            "requests_seen": 4,
            "shown_seen": s,
            "accepted_seen": a,
            "retained_chars_seen": r,
        }
        for i, (a, s, r) in enumerate(zip(accepted, shown, retained, strict=True))
    ]
    return {"version": "1", "per_session": sessions}


def test_report_pairs_every_difference_and_judges_the_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 39  # 13 cycles of 0, 1, 2 accepted of 5 shown: exactly 20%
    v0 = measurement([i % 3 for i in range(n)], [5] * n, [10 * (i % 3) for i in range(n)])  # 20%
    better = measurement([2 * (i % 3) for i in range(n)], [5] * n, [20 * (i % 3) for i in range(n)])  # 40%
    same = measurement([i % 3 for i in range(n)], [5] * n, [10 * (i % 3) for i in range(n)])

    def cell(m: dict, verdict: str) -> dict:
        return {
            "child_run_id": "run",
            "day": "2026-01-05",
            "steps": {
                "world": {"accepted": 10, "shown": 50, "seconds": 1.0},
                "nightly": {"gold_rows": {"sft": 100}, "seconds": 1.0},
                "train": {
                    "version": "2",
                    "loss_tokens": 1000,
                    "team_loss_tokens": 700,
                    "steps": 4,
                    "seconds": 1.0,
                    "calibration": {"acceptance": 0.25, "retained_per_request": 0.5},
                },
                "gate": {"version": "2", "verdict": verdict, "seconds": 1.0},
                "measure": {**m, "version": "2" if verdict == "pass" else "1", "seconds": 0.0},
            },
        }

    data = {
        "settings": {**flywheel.asdict(settings(rounds=3)), "name": "unit"},
        "v0": {"name": "echo-agent", "version": "1", "tags": {"echo.preset": "tiny"}},
        "seeds": {"0": {"v0_measure": v0}},
        "cells": {
            f"s0/{arm}/r{r}": cell(better if arm == "echo" else same, "pass" if arm == "echo" else "fail")
            for arm in ("echo", "control")
            for r in (1, 2, 3)
        },
    }
    summary = flywheel_report.summarise(data)
    echo = summary["cells"][("echo", 3)]
    assert echo["acceptance"][0] == pytest.approx(0.4)
    assert echo["acceptance_vs_v0"][0] == pytest.approx(0.2)  # paired: the same sessions
    assert echo["retained_vs_v0"][0] == pytest.approx(1.0)  # 10 more characters over 10 requests
    gap = summary["comparisons"][("echo", "control", 3)]["acceptance"]
    assert gap[0] == pytest.approx(0.2) and 0 < gap[1] < gap[0] < gap[2]  # a real interval
    with pytest.raises(ValueError, match="same sessions"):
        flywheel_report.ratio(better["per_session"][1:], "accepted", "shown", base=v0["per_session"][:-1])
    verdicts = {t: v for t, _, v in flywheel_report.targets(data, summary)}
    assert (
        verdicts["echo acceptance >= 1.4x v0 after round 3, paired CI low > 0, retained not lower"] == "met"
    )
    assert (
        verdicts["echo above control after round 3 (paired retained CI above 0, acceptance not lower)"]
        == "met"
    )
    assert (
        verdicts["echo above naive-raw after round 3 (paired retained CI above 0, acceptance not lower)"]
        == "not measured"
    )

    monkeypatch.chdir(tmp_path)  # `make flywheel` passes a relative --results-md
    results = Path("results.md")
    results.write_text("# Results\n\nhand-written text stays\n")
    for _ in range(2):  # regenerating replaces the section, never appends a second one
        paths = flywheel_report.write(data, tmp_path / "results", results)
    text = results.read_text()
    assert text.count(flywheel_report.MARK_BEGIN) == 1 and "hand-written text stays" in text
    assert "| 3 | echo - control | +20.00% [+" in text
    assert "](results/flywheel-unit-acceptance.png)" in text
    # each seed's arm-rounds, with the calibration split a screen selects by, and team-code tokens
    assert "| 1 | echo | 0 | v2 | 1,000 | 700 | 25.00% | 0.500 | v2 |" in text
    assert "| 0 | v0 | 0 | - |" in text and "| +20.00% [+" in text  # v0 per seed, and each seed's gain
    assert "| 3 | 0 | echo - control | +20.00% [+" in text  # and each seed's paired differences
    # held-out lines also in experience files, apart from the rest: 40% of requests, all the gain
    assert "| 3 | echo | 40.0% | 40.00% [" in text and "| 0.000 [0.000, 0.000] |" in text
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    # a round some arm has not finished is not reported as if it had
    del data["cells"]["s0/control/r3"]
    assert ("control", 3) not in flywheel_report.summarise(data)["cells"]


SETTINGS = [
    "world.sessions=8",
    "world.acceptance_sessions=8",
    "engine.show_threshold=0",  # the tiny model is rarely confident: show its proposals anyway
    "learn.max_steps=2",
    "promotion.forgetting_samples=20",
    "promotion.offline_max_rows=50",
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.driver_memory=1g",
    "train.num_procs=1",
]


@pytest.mark.integration
@pytest.mark.timeout(1800)  # about 6 minutes on a quiet machine; two processes, four arm-rounds
def test_two_rounds_two_arms_killed_mid_training_and_resumed(bootstrapped: dict, tmp_path: Path) -> None:
    from echo_lib.core import registry

    var = copy_var(bootstrapped["var"], tmp_path / "var")
    options = [x for kv in SETTINGS for x in ("--set", kv)]
    command = [
        str(Path(sys.executable).with_name("echoctl")),
        *options,
        "flywheel",
        "--rounds",
        "2",
        "--arms",
        "echo,control",
        "--name",
        "t",
        "--report-dir",
        str(tmp_path / "report"),
        "--json",
    ]
    env = echoctl_env(var)
    state_path = var / "flywheel" / "t" / "state.json"
    pointer = var / "work" / "train" / "LATEST-flywheel-echo-agent-t-echo-s0"

    # kill -9 the whole experiment (ranks included) once round 1 of `echo` is training
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not pointer.is_file():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(state_path.read_text())
    done = before["cells"]["s0/echo/r1"]["steps"]
    assert set(done) == {"world", "nightly"}  # the unit of resume: finished steps are kept
    interrupted_run = Path(pointer.read_text().strip()).name

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    state = json.loads(state_path.read_text())
    assert sorted(state["cells"]) == ["s0/control/r1", "s0/control/r2", "s0/echo/r1", "s0/echo/r2"]
    echo_r1 = state["cells"]["s0/echo/r1"]["steps"]
    assert echo_r1["world"] == done["world"] and echo_r1["nightly"] == done["nightly"]  # not redone
    assert echo_r1["train"]["run_id"] == interrupted_run  # the killed training resumed, no new run

    cfg = load_config(overrides={"var_dir": str(var)}).config
    client = registry.client(cfg)
    for arm in ("echo", "control"):
        name = f"{cfg.mlflow.registered_model}-t-{arm}-s0"
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        assert versions == [1, 2, 3]  # v0, one challenger a round: nothing trained twice
        v0 = client.get_model_version(name, "1")
        assert v0.tags["echo.stage"] == "bootstrap"  # every arm starts from the same v0
        r1 = client.get_model_version(name, state["cells"][f"s0/{arm}/r1"]["steps"]["train"]["version"])
        assert r1.tags["echo.baseline"] == ("public" if arm == "control" else "none")
        assert r1.tags["echo.gate.verdict"] in ("pass", "fail")
    # round 1 serves v0 to every arm on the same simulated day: the same traffic, event for event
    worlds = [
        {
            k: v
            for k, v in state["cells"][f"s0/{arm}/r1"]["steps"]["world"].items()
            if k not in ("seconds", "model_version")
        }
        for arm in ("echo", "control")
    ]
    assert worlds[0] == worlds[1] and worlds[0]["events"] > 0
    # one MLflow experiment: the parent run and a child per arm-round
    experiment = client.get_experiment_by_name(f"{cfg.mlflow.experiment}-flywheel")
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted((c.data.tags["echo.arm"], c.data.tags["echo.round"]) for c in children) == [
        ("control", "1"),
        ("control", "2"),
        ("echo", "1"),
        ("echo", "2"),
    ]
    assert all("acceptance" in c.data.metrics for c in children)
    # equal compute, measured: every arm-round trained the same steps
    assert {c["steps"]["train"]["steps"] for c in state["cells"].values()} == {2}
    # every champion was measured on the same report sessions, which are not the gate's
    measured = [c["steps"]["measure"]["per_session"] for c in state["cells"].values()]
    ids = {tuple(s["session_id"] for s in m) for m in measured}
    assert len(ids) == 1 and ids == {
        tuple(s["session_id"] for s in state["seeds"]["0"]["v0_measure"]["per_session"])
    }
    report = (tmp_path / "report" / "flywheel-t.md").read_text()
    assert "| 2 | echo - control |" in report
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/flywheel-t.md",
        "report/flywheel-t-acceptance.png",
    }
