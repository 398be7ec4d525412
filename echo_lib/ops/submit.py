"""Run a job from ``jobs/`` with ``spark-submit``, master and settings from config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echo_lib.core.config import EchoConfig
from echo_lib.core.spark import spark_conf

RESULT_PREFIX = "ECHO_RESULT "
PROGRESS_PREFIX = "ECHO_PROGRESS "  # a job's progress line: passed on to the caller while it runs
_SAYING = threading.Lock()  # a stage poller thread and the job's own steps both say things


def say(message: str) -> None:
    """What a job prints to report progress (see :func:`run_job`): one line, written whole."""
    with _SAYING:
        sys.stdout.write(PROGRESS_PREFIX + message.replace("\n", " ") + "\n")
        sys.stdout.flush()


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


def run_job(
    cfg: EchoConfig,
    job: str,
    args: list[str],
    *,
    log_name: str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Submit ``jobs/<job>.py``; return the JSON result it prints; full output goes to a log.

    The job's progress lines (``ECHO_PROGRESS ...``) go to ``progress`` as they are printed."""
    log = cfg.var_path / "logs" / "spark" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    from echo_lib.core.config import write_effective

    # the job loads the config this process runs with (--config, environment and --set flags)
    config_file = write_effective(cfg, log.with_suffix(".config.yaml"))
    env = {
        **os.environ,
        **cfg.runtime_env(),
        "ECHO_CONFIG": str(config_file),
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
    }
    cmd = spark_submit_command(cfg, job, args)
    results: list[str] = []
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()  # keep the log in time order with the job's stderr
                if line.startswith(RESULT_PREFIX):
                    results.append(line[len(RESULT_PREFIX) :])
                elif line.startswith(PROGRESS_PREFIX) and progress:
                    progress(line[len(PROGRESS_PREFIX) :].rstrip("\n"))
    if proc.returncode != 0 or not results:
        errors = [
            ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln or "Exception" in ln
        ]
        reason = errors[-1].strip()[:300] if errors else f"exit code {proc.returncode}"
        raise JobFailed(f"{job} failed: {reason} (full log: {log})")
    return json.loads(results[-1])
