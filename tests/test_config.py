from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from echo_lib.core.config import ConfigError, effective_items, load_config, parse_overrides
from echo_lib.ops.cli import app


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "echo.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_live_under_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECHO_HOME", str(tmp_path))
    cfg = load_config().config
    assert cfg.spark.master == "local[*]"
    assert cfg.lake_uri == str(tmp_path / "var" / "lake")
    assert cfg.mlflow_tracking_uri == f"sqlite:///{tmp_path}/var/mlflow/mlflow.db"
    assert cfg.airflow_home == tmp_path / "var" / "airflow"
    assert cfg.checkpoint_dir == tmp_path / "var" / "checkpoints"


def test_precedence_file_then_env_then_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "spark:\n  master: spark://file:7077\n  driver_memory: 8g\ntrain:\n  num_procs: 3\n"
    )
    monkeypatch.setenv("ECHO_SPARK__MASTER", "spark://env:7077")
    monkeypatch.setenv("ECHO_TRAIN__NUM_PROCS", "5")

    loaded = load_config(path, parse_overrides(["train.num_procs=8"]))
    cfg = loaded.config
    assert cfg.spark.driver_memory == "8g"  # file only
    assert cfg.spark.master == "spark://env:7077"  # env beats file
    assert cfg.train.num_procs == 8  # flag beats env and file
    assert loaded.origin["spark.driver_memory"] == f"file {path}"
    assert loaded.origin["spark.master"] == "env ECHO_SPARK__MASTER"
    assert loaded.origin["train.num_procs"] == "flag"


def test_scale_out_keys_are_config_not_code(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "lake: {uri: 's3a://bucket/echo'}\nmlflow: {tracking_uri: 'http://mlflow:5000'}\n"
        "train: {num_gpus: 8, num_nodes: 2, hostfile: /etc/ds/hostfile, zero_stage: 3}\n",
    )
    cfg = load_config(path).config
    assert cfg.lake_uri == "s3a://bucket/echo"
    assert cfg.mlflow_tracking_uri == "http://mlflow:5000"
    assert (cfg.train.num_gpus, cfg.train.num_nodes, cfg.train.zero_stage) == (8, 2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spark:\n  shuffle_partitions: 0\n", "spark.shuffle_partitions: Input should be greater than 0"),
        ("spark:\n  mastr: yarn\n", "spark.mastr: Extra inputs are not permitted"),
        ("train:\n  zero_stage: 4\n", "train.zero_stage"),
        ("train:\n  num_nodes: 2\n", "num_nodes > 1 needs train.hostfile"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("spark: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_file_fails_with_the_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(write_yaml(tmp_path, text))


def test_bad_env_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_TRAIN__NUM_PROCS", "many")
    with pytest.raises(ConfigError, match=r"train.num_procs: .*integer.*\(from env ECHO_TRAIN__NUM_PROCS\)"):
        load_config()


def test_missing_config_file_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/echo.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["spark.master"])


def test_echo_config_env_points_at_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "mlflow:\n  experiment: from-env-file\n")
    monkeypatch.setenv("ECHO_CONFIG", str(path))
    loaded = load_config()
    assert loaded.file == path and loaded.config.mlflow.experiment == "from-env-file"


def test_config_show_reports_values_and_origins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "spark:\n  driver_memory: 6g\n")
    monkeypatch.setenv("ECHO_SPARK__MASTER", "local[2]")
    result = CliRunner().invoke(
        app, ["--config", str(path), "--set", "train.num_procs=4", "config", "show", "--json"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["spark.driver_memory"] == {"value": "6g", "origin": f"file {path}"}
    assert shown["spark.master"] == {"value": "local[2]", "origin": "env ECHO_SPARK__MASTER"}
    assert shown["train.num_procs"] == {"value": 4, "origin": "flag"}
    assert shown["lake.uri"]["origin"] == "default (derived)"
    assert len(shown) == len(effective_items(load_config(path)))


def test_cli_config_error_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(app, ["--set", "train.num_procs=-1", "config", "show"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "train.num_procs" in result.stderr


def test_airflow_on_sqlite_waits_for_the_write_lock_and_on_postgres_is_left_alone(tmp_path) -> None:
    import importlib

    from echo_lib.core.config import load_config

    local = load_config(overrides={"var_dir": str(tmp_path)}).config.airflow_env()
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC",
    ):
        module, name = local[key].rsplit(".", 1)  # the import path Airflow resolves
        assert getattr(importlib.import_module(module), name)["timeout"] >= 30
    postgres = load_config(
        overrides={"airflow.sql_alchemy_conn": "postgresql+psycopg2://airflow@db/airflow"}
    ).config.airflow_env()
    assert not any("CONNECT_ARGS" in key for key in postgres)


def test_cluster_settings_reach_the_processes_echo_starts(tmp_path) -> None:
    from echo_lib.core.config import load_config
    from echo_lib.core.spark import spark_conf
    from echo_lib.training.launch import deepspeed_command, write_deepspeed_env

    cfg = load_config(
        overrides={
            "spark.driver_host": "10.0.0.5",
            "airflow.executor": "CeleryExecutor",
            "airflow.execution_api_url": "http://api:8080/execution/",
            "mlflow.tracking_uri": "http://mlflow:5000",
            "train.num_nodes": 2,
            "train.hostfile": "/etc/hostfile",
            "train.no_ssh": True,
            "train.node_rank": 1,
            "train.master_addr": "10.0.0.1",
        }
    ).config
    assert spark_conf(cfg)["spark.driver.host"] == "10.0.0.5"
    assert cfg.runtime_env()["SPARK_LOCAL_IP"] == "10.0.0.5"
    airflow = cfg.airflow_env()
    assert airflow["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert airflow["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api:8080/execution/"
    assert cfg.mlflow_artifact_location == ""  # the server stores artifacts, not a client path
    cmd = deepspeed_command(cfg, tmp_path / "job.json")
    assert cmd[cmd.index("--node_rank") + 1] == "1" and "--no_ssh" in cmd
    assert cmd[cmd.index("--master_addr") + 1] == "10.0.0.1"
    env_file = write_deepspeed_env(cfg, tmp_path / "job.json").read_text()
    assert "DS_ACCELERATOR=cpu\n" in env_file and "OMP_NUM_THREADS=1\n" in env_file


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.node_rank": 1}, "node_rank 1 is not below num_nodes 1"),
        (
            {"train.num_nodes": 2, "train.hostfile": "h", "train.no_ssh": True},
            "needs train.master_addr",
        ),
    ],
)
def test_multi_node_settings_that_cannot_work_are_refused(overrides, message) -> None:
    from echo_lib.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_train_node_refuses_to_run_as_node_0() -> None:
    from echo_lib.core.config import load_config
    from echo_lib.training.launch import TrainingFailed, follow

    with pytest.raises(TrainingFailed, match="train.node_rank > 0"):
        follow(load_config().config, max_jobs=1)
