"""Start a training job under the ``deepspeed`` launcher, with flags and environment from config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from echo_lib.core.config import EchoConfig
from echo_lib.training.rank import PROGRESS_PREFIX


class TrainingFailed(RuntimeError):
    """The launcher or a rank exited non-zero; the message carries the last lines of output."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_command(cfg: EchoConfig, job_path: Path, *, num_procs: int | None = None) -> list[str]:
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    train = cfg.train
    port = train.master_port if train.num_nodes > 1 or _port_free(train.master_port) else free_port()
    cmd = [launcher]
    if train.hostfile:
        cmd += ["--hostfile", train.hostfile, "--num_nodes", str(train.num_nodes)]
    if train.num_gpus > 0:
        cmd += ["--num_gpus", str(train.num_gpus)]
    else:
        cmd += ["--num_accelerators", str(num_procs or train.num_procs)]
    cmd += ["--master_port", str(port), "--module", "echo_lib.training.rank", "--job", str(job_path)]
    return cmd


def training_env(cfg: EchoConfig) -> dict[str, str]:
    env = {**os.environ, **cfg.runtime_env(), "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = str(cfg.train.torch_threads)
    if cfg.train.num_gpus == 0:
        env["DS_ACCELERATOR"] = "cpu"
    Path(env["TORCH_EXTENSIONS_DIR"]).mkdir(parents=True, exist_ok=True)
    return env


def launch(
    cfg: EchoConfig,
    job_path: Path,
    log_path: Path,
    *,
    num_procs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run the launcher and stream its output to ``log_path``; rank 0's progress lines
    (``train: step k/n, ...``) also go to ``progress``, so a long run is never silent."""
    cmd = deepspeed_command(cfg, job_path, num_procs=num_procs)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        with subprocess.Popen(
            cmd,
            env=training_env(cfg),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                at = line.find(PROGRESS_PREFIX)
                if progress is not None and at >= 0:
                    progress(line[at:].rstrip())
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if "Error" in line or "error:" in line]
        reason = (errors or lines or ["no output"])[-1].strip()
        raise TrainingFailed(f"training exited {proc.returncode}: {reason[:300]} (full log: {log_path})")
