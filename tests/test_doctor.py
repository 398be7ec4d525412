from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from echo_lib.core.config import load_config
from echo_lib.ops.doctor import CHECKS, check_java, run_checks


@pytest.mark.integration
def test_doctor_passes_against_the_real_stack(var_dir: Path) -> None:
    echoctl = Path(sys.executable).with_name("echoctl")
    proc = subprocess.run([str(echoctl), "doctor"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CHECKS:
        assert name in proc.stdout
    assert f"all {len(CHECKS)} checks passed" in proc.stdout
    # the checks really wrote to the configured stores
    assert (var_dir / "mlflow" / "mlflow.db").is_file()
    assert (var_dir / "airflow" / "airflow.db").is_file()


def test_doctor_reports_a_failure_with_its_reason(var_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no java on PATH
    [result] = run_checks(load_config().config, ["java"])
    assert not result.ok
    assert result.detail == "java not found on PATH"


def test_doctor_cli_fails_non_zero_and_names_the_check(var_dir: Path) -> None:
    echoctl = Path(sys.executable).with_name("echoctl")
    proc = subprocess.run(
        [
            str(echoctl),
            "--set",
            "mlflow.tracking_uri=sqlite:////proc/no/such/dir/mlflow.db",
            "doctor",
            "--only",
            "mlflow",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout
    assert "1 check(s) failed: mlflow" in proc.stderr


def test_unknown_check_is_a_usage_error() -> None:
    echoctl = Path(sys.executable).with_name("echoctl")
    proc = subprocess.run(
        [str(echoctl), "doctor", "--only", "kafka"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "unknown check(s) kafka" in proc.stderr


def test_java_check_reads_the_installed_version() -> None:
    import re

    detail = check_java(load_config().config)
    major = int(re.search(r'version "(\d+)', detail).group(1))
    assert major >= 17
