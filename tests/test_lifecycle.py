"""A training run's end states on a real MLflow store: FAILED with the reason, or KILLED."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_lib.core import registry
from echo_lib.core.config import load_config
from echo_lib.training import lifecycle
from echo_lib.training.launch import TrainingFailed


class StageError(RuntimeError):
    pass


def test_a_run_ends_failed_with_its_reason_or_killed(tmp_path: Path) -> None:
    cfg = load_config(overrides={"var_dir": str(tmp_path / "var")}).config
    client = registry.client(cfg)

    failed, work = lifecycle.open_run(
        cfg, client, kind="train", run_name="failing", tags={"echo.objective": "sft"}
    )
    assert work == cfg.var_path / "work" / "train" / failed and work.is_dir()
    expected = pytest.raises(StageError, match=r"rank 1 ran out of memory; continue with --resume")
    with expected, lifecycle.ending(client, failed, StageError, hint="; continue with --resume"):
        raise TrainingFailed("rank 1 ran out of memory")
    run = client.get_run(failed)
    assert run.info.status == "FAILED" and run.data.tags["echo.error"] == "rank 1 ran out of memory"
    assert run.data.tags["echo.stage"] == "train" and run.data.tags["echo.objective"] == "sft"

    killed, _ = lifecycle.open_run(cfg, client, kind="train", run_name="interrupted", tags={})
    with pytest.raises(KeyboardInterrupt), lifecycle.ending(client, killed, StageError):
        raise KeyboardInterrupt
    assert client.get_run(killed).info.status == "KILLED"
    assert "echo.error" not in client.get_run(killed).data.tags


def test_a_finished_launch_without_a_report_is_a_training_failure(tmp_path: Path) -> None:
    assert lifecycle.stage_report(tmp_path) is None
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "rank0.json").write_text('{"final_loss": 1.5}')
    assert lifecycle.stage_report(tmp_path) == {"final_loss": 1.5}
