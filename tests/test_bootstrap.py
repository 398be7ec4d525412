"""The v0 agent through the real deepspeed launcher, 2 CPU ranks, a real SQLite MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_lib.core.config import load_config
from tests.conftest import run_echoctl

pytestmark = pytest.mark.integration


def _cfg(var: Path):
    return load_config(overrides={"var_dir": str(var)}).config


def _reports(var: Path, run_id: str) -> dict[int, dict]:
    folder = var / "checkpoints" / "bootstrap" / run_id / "reports"
    return {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in folder.glob("rank*.json")}


def test_two_rank_bootstrap_trains_and_ranks_agree(bootstrapped: dict) -> None:
    result = bootstrapped["result"]
    assert result["status"] == "registered" and result["version"] == "1"
    reports = _reports(bootstrapped["var"], result["run_id"])
    assert sorted(reports) == [0, 1]
    assert all(r["world_size"] == 2 for r in reports.values())
    assert reports[0]["initial_digest"] == reports[1]["initial_digest"]  # same seed, same init
    assert reports[0]["final_digest"] != reports[0]["initial_digest"]  # parameters changed
    assert reports[0]["final_digest"] == reports[1]["final_digest"]  # ranks in sync
    assert reports[0]["steps"] == 12 and reports[0]["tokens"] == 12 * 4 * 2 * 128


def test_one_mlflow_run_and_champion_alias(bootstrapped: dict) -> None:
    from echo_lib.core import registry

    cfg = _cfg(bootstrapped["var"])
    client = registry.client(cfg)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`echo.stage` = 'bootstrap'")
    assert len(runs) == 1, "exactly one run for a 2-rank job"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["preset.name"] == "tiny"
    assert len(run.data.tags["echo.public_split_hash"]) == 64
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) >= 1 and all(m.value > 0 for m in history)
    assert run.data.metrics["parameters"] > 0
    champion = registry.version_by_alias(cfg, registry.CHAMPION)
    assert champion is not None and str(champion.version) == "1" and champion.run_id == run.info.run_id
    assert champion.tags["echo.stage"] == "bootstrap"


def test_champion_loads_by_alias_and_generates(bootstrapped: dict) -> None:
    from echo_lib.agent.engine import CompletionEngine, EngineSettings

    cfg = _cfg(bootstrapped["var"])
    engine = CompletionEngine.load(
        f"models:/{cfg.mlflow.registered_model}@champion",
        EngineSettings(max_new_tokens=8),
        tracking_uri=cfg.mlflow_tracking_uri,
        cache_dir=bootstrapped["var"] / "cache" / "models",
    )
    assert engine.model_version == f"models:/{cfg.mlflow.registered_model}/1"
    proposals = engine.complete(["import os\n\ndef main():\n    ", "class Foo(", "x = "])
    assert len(proposals) == 3
    assert all(0.0 <= p.confidence <= 1.0 for p in proposals)
    assert any(p.num_tokens > 0 for p in proposals)


def test_rerun_with_a_champion_is_a_no_op(bootstrapped: dict) -> None:
    proc = run_echoctl(bootstrapped["var"], "bootstrap", "--preset", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {**result, "status": "exists", "version": "1"}
    from echo_lib.core import registry

    cfg = _cfg(bootstrapped["var"])
    client = registry.client(cfg)
    assert len(client.search_model_versions(f"name='{cfg.mlflow.registered_model}'")) == 1


def test_failed_training_registers_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    # an invalid step budget is rejected by the training job's validation; the run is marked FAILED
    proc = run_echoctl(var, "bootstrap", "--preset", "tiny", "--num-procs", "1", "--max-steps", "-3")
    assert proc.returncode == 1
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "bootstrap failed" in error and "max_steps must be positive" in error

    from echo_lib.core import registry

    cfg = _cfg(var)
    assert registry.version_by_alias(cfg, registry.CHAMPION) is None
    runs = registry.client(cfg).search_runs(
        [registry.client(cfg).get_experiment_by_name("echo").experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_unknown_preset_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_echoctl(tmp_path / "var", "bootstrap", "--preset", "huge")
    assert proc.returncode == 1
    assert "unknown preset 'huge'" in proc.stderr


def test_bootstrap_starts_from_a_checkpoint_with_from_pretrained(tmp_path: Path) -> None:
    """A user with a real checkpoint gives its directory; here, one the project saved itself."""
    import inspect
    import json as json_module

    import torch
    from transformers import LlamaForCausalLM

    from echo_lib.agent.presets import build_model_config, get_preset
    from echo_lib.agent.tokenizer import train_tokenizer
    from echo_lib.training.rank import param_digest

    tokenizer = train_tokenizer([inspect.getsource(json_module.decoder)] * 4, vocab_size=300)
    torch.manual_seed(7)
    model = LlamaForCausalLM(build_model_config(get_preset("tiny"), tokenizer))
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    var = tmp_path / "var"
    proc = run_echoctl(
        var,
        "--set",
        f"train.base_model={checkpoint}",
        "bootstrap",
        "--preset",
        "tiny",
        "--num-procs",
        "1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    reports = _reports(var, result["run_id"])
    assert reports[0]["initial_digest"] == param_digest(model)  # training started from those weights
    assert reports[0]["final_digest"] != reports[0]["initial_digest"]
    from echo_lib.core import registry

    version = registry.version_by_alias(_cfg(var), registry.CHAMPION)
    assert version.tags["echo.base_model"] == str(checkpoint)

    missing = run_echoctl(
        tmp_path / "var2",
        "--set",
        f"train.base_model={tmp_path / 'nope'}",
        "bootstrap",
        "--preset",
        "tiny",
        "--num-procs",
        "1",
    )
    assert missing.returncode == 1 and "cannot load train.base_model" in missing.stderr
