"""Refining the champion on gold: TRL objectives under the real deepspeed launcher (2 CPU ranks),
a real SQLite MLflow registry, resume after a real kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echo_lib.core.config import load_config
from tests.conftest import copy_var, echoctl_env, run_echoctl

GOLD_DT = "2026-11-20"


def _cfg(var: Path):
    return load_config(overrides={"var_dir": str(var)}).config


def _team_lines() -> list[str]:
    """Real lines of a team repo: the code the refinements are about."""
    from echo_lib.world import corpus

    cfg = load_config().config
    files = corpus.scan(corpus.team_repos(cfg), cfg).select("experience")
    text = next(f.text for f in sorted(files, key=lambda f: f.doc_id) if f.text.count("\n") > 200)
    return text.splitlines()


def write_gold(lake: Path, dt: str, n: int = 48, *, drop_column: str | None = None) -> None:
    """A gold build in the lake's layout (what build-dataset writes), from real code."""
    lines = _team_lines()
    sft, pref, kto = [], [], []
    for i in range(n):
        at = 20 + 3 * i
        line = lines[at]
        cut = max(1, len(line) // 2)
        prompt = "\n".join(lines[max(0, at - 30) : at]) + "\n" + line[:cut]
        final, proposal = line[cut:], "pass"
        rid = f"req-{i:04d}"
        split = "validation" if i % 16 == 15 else "train"
        sft.append({"request_id": rid, "prompt": prompt, "completion": final, "split": split})
        pref.append(
            {
                "request_id": rid,
                "prompt": prompt,
                "chosen": final,
                "rejected": proposal,
                "outcome": "rejected_rewritten",
                "split": split,
            }
        )
        kto.append(
            {"request_id": rid, "prompt": prompt, "completion": final, "label": i % 2 == 0, "split": split}
        )
    manifest = {"dt": dt, "datasets": {}, "sha256": f"manifest-{dt}"}
    for table, rows in (("sft", sft), ("preference", pref), ("kto", kto)):
        folder = lake / "gold" / table / f"dt={dt}"
        folder.mkdir(parents=True, exist_ok=True)
        frame = pa.Table.from_pylist(rows)
        if drop_column and drop_column in frame.column_names:
            frame = frame.drop_columns([drop_column])
        pq.write_table(frame, folder / "part-00000.parquet")
        (folder / "_SUCCESS").touch()
        manifest["datasets"][table] = {"rows": len(rows), "sha256": f"{table}-{dt}"}
        (folder / "_manifest.json").write_text(json.dumps(manifest["datasets"][table]))  # vouched for
    folder = lake / "gold" / "_manifests" / f"dt={dt}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    (folder / "_SUCCESS").touch()


@pytest.fixture(scope="session")
def gold_var(bootstrapped: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bootstrapped var (tiny v1 champion) with one gold build."""
    var = tmp_path_factory.mktemp("learn") / "var"
    copy_var(bootstrapped["var"], var)
    write_gold(var / "lake", GOLD_DT)
    return var


def _train(var: Path, *args: str, settings: tuple[str, ...] = ()) -> dict:
    options = [x for kv in ("learn.save_steps=4", *settings) for x in ("--set", kv)]
    proc = run_echoctl(var, *options, "train", "--json", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def _train_runs(client) -> list:
    experiment = client.get_experiment_by_name("echo")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`echo.stage` = 'train'")


def _reports(var: Path, run_id: str, stage: str) -> dict[int, dict]:
    folder = var / "checkpoints" / "train" / run_id / stage / "reports"
    return {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in folder.glob("rank*.json")}


# ---- rows (no training) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    import inspect
    import json as json_module

    from echo_lib.agent.tokenizer import train_tokenizer

    return train_tokenizer([inspect.getsource(json_module.decoder)] * 4, vocab_size=400)


def test_sft_rows_are_the_healed_prompt_then_the_kept_code(tokenizer) -> None:
    from echo_lib.training.refine import sft_ids

    prefix, kept = "def scan(s):\n    return s.strip", "().split(',')"
    row = sft_ids(tokenizer, prefix, kept, max_length=64)
    prompt = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m == 0]
    target = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m == 1]
    assert prompt == tokenizer(prefix, add_special_tokens=False)["input_ids"][:-1]  # last token healed
    assert tokenizer.decode(prompt) + tokenizer.decode(target[:-1]) == prefix + kept + "\n"
    assert target[-1] == tokenizer.eos_token_id
    short = sft_ids(tokenizer, prefix * 20, kept, max_length=24)
    assert len(short["input_ids"]) == 24 and sum(short["completion_mask"]) == sum(row["completion_mask"])
    assert sft_ids(tokenizer, prefix, kept * 30, max_length=24) is None  # the target alone does not fit


def test_replay_share_and_window_selection() -> None:
    from echo_lib.training.refine import TrainError, default_steps, replay_count, select_window

    assert replay_count(70, 0.3) == 30 and replay_count(70, 0.0) == 0
    assert default_steps(100, 8, 300) == 25 and default_steps(10_000, 8, 300) == 300
    dates = ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert select_window(dates, None, None, 2) == dates[1:]
    assert select_window(dates, "2026-11-21", "2026-11-21", 7) == ["2026-11-21"]
    with pytest.raises(TrainError, match="no gold datasets in 2030-01-01"):
        select_window(dates, "2030-01-01", None, 7)


# ---- training through the launcher ---------------------------------------------------------


@pytest.mark.integration
# sft alone is not a case of its own: sft+dpo trains the same sft stage first, kto covers a
# single-stage run's unprefixed metrics
@pytest.mark.parametrize("objective", ["kto", "sft+dpo"])
def test_objective_trains_on_two_ranks_and_registers_a_challenger(gold_var: Path, objective: str) -> None:
    from echo_lib.agent.engine import CompletionEngine, EngineSettings
    from echo_lib.core import registry

    cfg = _cfg(gold_var)
    client = registry.client(cfg)
    runs_before = len(_train_runs(client))
    result = _train(gold_var, "--objective", objective, "--max-steps", "8", "--num-procs", "2")
    assert result["parent_version"] == "1" and result["dates"] == [GOLD_DT]
    for stage in result["stages"]:
        reports = _reports(gold_var, result["run_id"], stage["name"])
        assert sorted(reports) == [0, 1] and reports[0]["world_size"] == 2
        assert reports[0]["final_digest"] != reports[0]["initial_digest"]  # parameters changed
        assert reports[0]["final_digest"] == reports[1]["final_digest"]  # ranks in sync
        assert stage["steps"] == 8 and stage["tokens"] > 0 and stage["final_loss"] > 0

    assert len(_train_runs(client)) == runs_before + 1  # one run per job, not one per rank
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["echo.stage"] == "train"
    assert run.data.tags["echo.parent_version"] == "1" and run.data.tags["echo.gold_dates"] == GOLD_DT
    assert len(run.data.tags["mlflow.source.git.commit"]) >= 7
    assert run.data.params["objective"] == objective
    names = [d.dataset.name for d in run.inputs.dataset_inputs]
    assert any(n.startswith("gold/") for n in names)
    last_stage = result["stages"][-1]["name"]
    prefix = f"{last_stage}/" if "+" in objective else ""
    history = client.get_metric_history(run.info.run_id, f"{prefix}loss")
    assert len(history) >= 2 and all(m.value == m.value for m in history)  # per-step, not NaN
    assert client.get_metric_history(run.info.run_id, f"{prefix}tokens_per_s")

    challenger = registry.version_by_alias(cfg, registry.CHALLENGER)
    assert str(challenger.version) == result["version"] and challenger.run_id == result["run_id"]
    assert challenger.tags["echo.parent"] == "1" and challenger.tags["echo.objective"] == objective
    assert str(registry.version_by_alias(cfg, registry.CHAMPION).version) == "1"  # not promoted
    engine = CompletionEngine.load(
        registry.model_uri(cfg, registry.CHALLENGER),
        EngineSettings(max_new_tokens=8),
        tracking_uri=cfg.mlflow_tracking_uri,
        cache_dir=gold_var / "cache" / "models",
    )
    assert engine.model_version.endswith(f"/{result['version']}")
    assert len(engine.complete(["import os\n", "def f("])) == 2


def test_token_counter_separates_loss_tokens_from_prompt_tokens() -> None:
    import torch

    from echo_lib.training.rank import TokenCounter, progress_line

    def collate(rows):
        return {
            "input_ids": torch.tensor(rows),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
            "labels": torch.tensor([[-100, -100, 7, 8], [-100, 5, 6, -100]]),
        }

    counter = TokenCounter(collate)
    batch = counter([[1, 2, 7, 8], [4, 5, 6, 0]])
    assert batch["labels"].shape == (2, 4)
    assert (counter.tokens, counter.loss_tokens) == (7, 4)
    line = progress_line(
        50,
        200,
        {"loss": 2.5, "tokens_per_s": 1000.0, "loss_tokens_per_s": 250.0, "loss_token_share": 0.25},
        elapsed=60.0,
        done=50,
    )
    assert line == "train: step 50/200, loss 2.500, 1,000 tokens/s, 250 loss tokens/s (25%), eta 3.0 min"


@pytest.mark.integration
def test_sft_counts_replay_in_loss_tokens_and_learns_the_context(gold_var: Path) -> None:
    """The rows recipe (before 2026-12), kept for comparison."""
    import pandas as pd

    share = 0.25
    result = _train(
        gold_var,
        "--objective",
        "sft",
        "--max-steps",
        "2",
        settings=(f"learn.replay_share={share}", "learn.recipe=rows"),
    )
    [stage] = result["stages"]
    frame = pd.read_parquet(gold_var / "work" / "train" / result["run_id"] / "sft.parquet")
    assert (frame["source"] == "gold").sum() == 45  # 48 rows, 3 in the validation split
    assert stage["replay_rows"] == (frame["source"] == "replay").sum() > 0
    assert stage["context_rows"] == (frame["source"] == "context").sum() > 0
    tokens = {src: int(sum(sum(m) for m in part["completion_mask"])) for src, part in frame.groupby("source")}
    # gold rows learn only the kept code; context and replay blocks are full-loss code
    for src in ("context", "replay"):
        part = frame[frame["source"] == src]
        assert all(len(m) == sum(m) for m in part["completion_mask"])
    assert all(sum(m) < len(m) for m in frame[frame["source"] == "gold"]["completion_mask"])
    assert abs(tokens["replay"] / sum(tokens.values()) - share) < 0.06  # whole blocks of <= 128 tokens
    assert stage["loss_tokens_per_epoch"] == sum(tokens.values())
    # throughput is reported in loss tokens too: most of an SFT step's tokens are masked prompt
    assert stage["loss_tokens"] > 0 and stage["prompt_tokens"] > 0 and stage["loss_tokens_per_s"] > 0
    # rank 0's progress reaches the console, not only the log file
    assert "train: step 2/2, loss " in result["stderr"] and "loss tokens/s" in result["stderr"]
    # the context of consecutive requests is learned once, not once per request
    assert stage["context_rows"] < 45


@pytest.mark.integration
def test_resume_after_a_kill_reaches_the_same_loss(gold_var: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    shutil.copytree(gold_var, var, ignore=shutil.ignore_patterns("checkpoints", "work"))
    args = ["--objective", "sft", "--max-steps", "24", "--num-procs", "2"]
    reference = _train(var, *args)
    [ref_stage] = reference["stages"]

    echoctl = str(Path(sys.executable).with_name("echoctl"))
    proc = subprocess.Popen(
        [echoctl, "--set", "learn.save_steps=4", "train", "--json", *args],
        env=echoctl_env(var),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoints = var / "checkpoints" / "train"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in checkpoints.glob("*/sft/checkpoint-8") if (p / "trainer_state.json").is_file()]
        if done:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, the launcher and both ranks
    proc.wait()
    time.sleep(1)

    # the killed run is the CLI's: an Airflow DAG run (its own pointer) has nothing to resume
    from echo_lib.training.refine import TrainError, resume_pointer, train

    assert resume_pointer(_cfg(var)).is_file() and not resume_pointer(_cfg(var), "airflow-manual_1").is_file()
    with pytest.raises(TrainError, match="nothing to resume: no interrupted airflow-manual_1"):
        train(_cfg(var), owner="airflow-manual_1", resume=True)

    resumed = _train(var, "--resume")
    [stage] = resumed["stages"]
    assert stage["resumed"] is True and stage["steps"] == 24
    assert resumed["run_id"] != reference["run_id"]
    print(
        f"final loss: uninterrupted {ref_stage['final_loss']:.6f}, killed and resumed {stage['final_loss']:.6f}"
    )
    assert stage["final_loss"] == pytest.approx(ref_stage["final_loss"], rel=0.01)
    # the supervision of the whole run, not of its last launch: the checkpoint kept the counts
    assert stage["loss_tokens"] == ref_stage["loss_tokens"] == stage["loss_tokens_per_epoch"]

    from echo_lib.core import registry

    run = registry.client(_cfg(var)).get_run(resumed["run_id"])
    assert run.info.status == "FINISHED"


@pytest.mark.integration
def test_bad_gold_fails_early_and_registers_nothing(gold_var: Path, tmp_path: Path) -> None:
    from echo_lib.core import registry

    var = tmp_path / "var"
    shutil.copytree(gold_var, var, ignore=shutil.ignore_patterns("checkpoints", "work", "lake"))
    cfg = _cfg(var)
    before = len(registry.client(cfg).search_model_versions(f"name='{cfg.mlflow.registered_model}'"))
    challenger = registry.version_by_alias(cfg, registry.CHALLENGER)

    proc = run_echoctl(var, "train", "--from", "2030-01-01", "--to", "2030-01-31")
    assert proc.returncode == 1 and "no gold datasets in 2030-01-01 to 2030-01-31" in proc.stderr

    write_gold(var / "lake", GOLD_DT, drop_column="completion")
    proc = run_echoctl(var, "train", "--objective", "sft")
    assert proc.returncode == 1
    assert "gold/sft dt=2026-11-20 lacks columns ['completion']" in " ".join(proc.stderr.split())

    write_gold(var / "lake", GOLD_DT)  # then a build of the date dies after its first table
    (var / "lake" / "gold" / "sft" / f"dt={GOLD_DT}" / "_manifest.json").write_text('{"sha256": "newer"}')
    proc = run_echoctl(var, "train", "--objective", "sft")
    assert proc.returncode == 1 and "a build of 2026-11-20 did not finish" in " ".join(proc.stderr.split())

    proc = run_echoctl(var, "train", "--resume")
    assert proc.returncode == 1 and "nothing to resume" in proc.stderr
    after = len(registry.client(cfg).search_model_versions(f"name='{cfg.mlflow.registered_model}'"))
    assert after == before
    still = registry.version_by_alias(cfg, registry.CHALLENGER)
    assert (still and still.version) == (challenger and challenger.version)


@pytest.mark.integration
def test_equal_compute_baselines_train_on_other_code_and_are_never_promoted(gold_var: Path) -> None:
    import pandas as pd

    from echo_lib.core import registry

    args = ("--objective", "sft", "--max-steps", "2")
    echo = _train(gold_var, *args)
    result = _train(gold_var, *args, "--control")
    [stage], [echo_stage] = result["stages"], echo["stages"]
    frame = pd.read_parquet(gold_var / "work" / "train" / result["run_id"] / "sft.parquet")
    assert set(frame["source"]) == {"public"} and stage["team_loss_tokens"] == 0  # public code only
    echo_frame = pd.read_parquet(gold_var / "work" / "train" / echo["run_id"] / "sft.parquet")
    assert set(echo_frame["source"]) == {"session", "replay"} and echo_stage["team_loss_tokens"] > 0
    # equal compute: the same rows, the same loss tokens within 5%, counted as trained
    assert stage["rows"] == echo_stage["rows"] == stage["steps"] * 8  # tiny: 4 rows x 2 ranks a step
    assert stage["loss_tokens_per_epoch"] == echo_stage["loss_tokens_per_epoch"]
    assert echo_stage["loss_tokens"] == echo_stage["loss_tokens_per_epoch"]  # one pass, every token seen
    cfg = _cfg(gold_var)
    control = registry.client(cfg).get_model_version_by_alias(cfg.mlflow.registered_model, "control")
    assert str(control.version) == result["version"] and control.tags["echo.control"] == "true"
    proc = run_echoctl(
        gold_var, "--set", "promotion.enabled=true", "promote", "--version", result["version"], "--json"
    )
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["verdict"] == "fail" and not outcome["promoted"]
    assert "never promoted" in outcome["reasons"][0]

    # the team's own files at the same compute: what a team would do instead of Echo
    repo = _train(gold_var, *args, "--baseline", "team-experience")
    [repo_stage] = repo["stages"]
    assert repo_stage["steps"] == echo_stage["steps"] and repo_stage["rows"] == echo_stage["rows"]
    assert abs(repo_stage["loss_tokens_per_epoch"] / echo_stage["loss_tokens_per_epoch"] - 1) < 0.05
    frame = pd.read_parquet(gold_var / "work" / "train" / repo["run_id"] / "sft.parquet")
    assert set(frame["source"]) == {"team-experience", "replay"}
    mv = registry.client(cfg).get_model_version_by_alias(cfg.mlflow.registered_model, "repo")
    assert str(mv.version) == repo["version"] and mv.tags["echo.baseline"] == "team-experience"
    assert mv.tags["echo.control"] == "true"  # a baseline, never promoted
    # a calibrated show policy travels with every trained version, baselines included
    assert mv.tags["echo.show_policy"].startswith(("logistic", "confidence"))
