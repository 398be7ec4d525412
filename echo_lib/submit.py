"""Run a job from ``jobs/`` with ``spark-submit``, master and settings from config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from echo_lib.config import EchoConfig
from echo_lib.spark import spark_conf

RESULT_PREFIX = "ECHO_RESULT "


class JobFailed(RuntimeError):
    """spark-submit exited non-zero; the message names the log with the full output."""


def spark_submit_command(cfg: EchoConfig, job: str, args: list[str]) -> list[str]:
    script = cfg.home / "jobs" / f"{job}.py"
    if not script.is_file():
        raise JobFailed(f"no such job: {script}")
    cmd = [
        str(Path(sys.executable).with_name("spark-submit")),
        "--master",
        cfg.spark.master,
        "--name",
        f"echo-{job}",
    ]
    for key, value in spark_conf(cfg).items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, str(script), *args]


def run_job(cfg: EchoConfig, job: str, args: list[str], *, log_name: str) -> dict[str, Any]:
    """Submit ``jobs/<job>.py``; return the JSON result it prints; full output goes to a log."""
    log = cfg.var_path / "logs" / "spark" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **cfg.runtime_env(), "PYSPARK_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    cmd = spark_submit_command(cfg, job, args)
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True, check=False)
        out.write(proc.stdout)
    results = [
        line[len(RESULT_PREFIX) :] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)
    ]
    if proc.returncode != 0 or not results:
        errors = [
            ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln or "Exception" in ln
        ]
        reason = errors[-1].strip()[:300] if errors else f"exit code {proc.returncode}"
        raise JobFailed(f"{job} failed: {reason} (full log: {log})")
    return json.loads(results[-1])
