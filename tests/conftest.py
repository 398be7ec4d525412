"""Shared fixtures. Every test gets an environment with no stray ECHO_* settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_echo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ECHO_") and key != "ECHO_HOME":
            monkeypatch.delenv(key)
    monkeypatch.setenv("ECHO_HOME", str(REPO))
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private var/ for one test: lake, MLflow store, Airflow home all land here."""
    path = tmp_path / "var"
    monkeypatch.setenv("ECHO_VAR_DIR", str(path))
    return path


def echoctl_env(var: Path, **extra: str) -> dict[str, str]:
    """Environment for an ``echoctl`` subprocess writing into ``var``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    env.update({"ECHO_HOME": str(REPO), "ECHO_VAR_DIR": str(var), "SPARK_LOCAL_IP": "127.0.0.1", **extra})
    # a trained tiny model is calibrated on a few canary sessions, not the default 200
    env.setdefault("ECHO_CALIBRATION__SESSIONS", "6")
    # DeepSpeed ops compile once per checkout, not once per test
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / "var" / "cache" / "torch_extensions"))
    return env


def run_echoctl(var: Path, *args: str, timeout: float = 900, **extra: str):
    import subprocess
    import sys

    echoctl = str(Path(sys.executable).with_name("echoctl"))
    return subprocess.run(
        [echoctl, *args], env=echoctl_env(var, **extra), capture_output=True, text=True, timeout=timeout
    )


def copy_var(src: Path, dst: Path) -> Path:
    """A private copy of a var dir: the MLflow store records absolute artifact URIs, so a plain
    copy would still write its artifacts (the champion's history among them) into ``src``."""
    import shutil
    import sqlite3

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "work"))
    old, new = (src / "mlflow" / "artifacts").as_uri(), (dst / "mlflow" / "artifacts").as_uri()
    con = sqlite3.connect(dst / "mlflow" / "mlflow.db")
    with con:
        for table, column in (
            ("experiments", "artifact_location"),
            ("runs", "artifact_uri"),
            ("model_versions", "source"),
            ("model_versions", "storage_location"),
        ):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    con.close()
    return dst


@pytest.fixture(scope="session")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real 2-rank tiny bootstrap for the whole session: var dir, result JSON."""
    import json

    var = tmp_path_factory.mktemp("bootstrapped") / "var"
    proc = run_echoctl(var, "bootstrap", "--preset", "tiny", "--num-procs", "2", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"var": var, "result": json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.fixture(autouse=True)
def _release_spark_cache(request: pytest.FixtureRequest):
    """Tests share one SparkSession, and the jobs persist what they count: drop it after each test,
    so the driver's heap holds one test's data at a time."""
    yield
    if "spark" in request.fixturenames:
        request.getfixturevalue("spark").catalog.clearCache()


@pytest.fixture(scope="session")
def spark():
    """One local[1] SparkSession for the whole test run (starting one costs seconds)."""
    from echo_lib.core.config import load_config
    from echo_lib.core.spark import get_session

    # Spark sizes its memory pages from the heap: 64 MB each at 2g. Every broadcast join builds its
    # hash table in such a page on the driver and keeps it until the broadcast is garbage-collected,
    # so a run of tiny joins filled the 2g heap in CI (a broadcast failed with "Java heap space").
    # Tiny test tables need tiny pages.
    overrides = {
        "spark.shuffle_partitions": 2,
        "spark.driver_memory": "2g",
        "spark.conf": {"spark.buffer.pageSize": "2m"},
    }
    cfg = load_config(overrides=overrides).config
    session = get_session(cfg, "echo-tests", master="local[1]")
    yield session
    session.stop()
