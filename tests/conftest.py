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
