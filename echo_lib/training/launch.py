"""Start a training job under the ``deepspeed`` launcher, with flags and environment from config.

Multi-node runs take one of DeepSpeed's two paths:

- **ssh** (``train.hostfile``, ``train.num_nodes`` > 1): node 0's launcher starts the other nodes
  over pdsh. Only a few variable prefixes travel that way, so the environment every rank needs is
  written to a ``.deepspeed_env`` file (``DS_ENV_FILE``) next to the job;
- **no ssh** (``train.no_ssh``, the container-native mode): every node runs its own launcher with
  its ``--node_rank``. Node 0 runs ``echoctl train`` and announces each job on the shared var
  folder; the other nodes run ``echoctl train-node``, which launches its side of every announced
  job (:func:`follow`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
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
        if train.no_ssh:
            cmd += ["--no_ssh", "--node_rank", str(train.node_rank)]
        if train.master_addr:
            cmd += ["--master_addr", train.master_addr]
    if train.num_gpus > 0:
        cmd += ["--num_gpus", str(train.num_gpus)]
    else:
        cmd += ["--num_accelerators", str(num_procs or train.num_procs)]
    cmd += ["--master_port", str(port), "--module", "echo_lib.training.rank", "--job", str(job_path)]
    return cmd


def rank_env(cfg: EchoConfig) -> dict[str, str]:
    """What every rank needs on top of the node's own environment."""
    env = {**cfg.runtime_env(), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(cfg.train.torch_threads)}
    if cfg.train.num_gpus == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def training_env(cfg: EchoConfig) -> dict[str, str]:
    env = {**os.environ, **rank_env(cfg)}
    Path(env["TORCH_EXTENSIONS_DIR"]).mkdir(parents=True, exist_ok=True)
    return env


def write_deepspeed_env(cfg: EchoConfig, job_path: Path) -> Path:
    """``.deepspeed_env`` for the ssh path: pdsh forwards only a few prefixes (MLFLOW, PYTHON, ...);
    the launcher adds every line of this file to the remote nodes' environment."""
    path = job_path.with_name(".deepspeed_env")
    path.write_text("".join(f"{key}={value}\n" for key, value in sorted(rank_env(cfg).items())))
    return path


def _announcement(cfg: EchoConfig) -> Path:
    return cfg.var_path / "work" / "nodes" / "launch.json"


def _announce(cfg: EchoConfig, job_path: Path, num_procs: int | None, state: str, launch_id: str) -> None:
    """Tell ``train-node`` followers (no-ssh mode) which job node 0 launches now, or that it ended."""
    path = _announcement(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"id": launch_id, "job": str(job_path), "num_procs": num_procs, "state": state, "at": time.time()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def _leads_followers(cfg: EchoConfig) -> bool:
    return cfg.train.no_ssh and cfg.train.num_nodes > 1 and cfg.train.node_rank == 0


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
    env = training_env(cfg)
    if cfg.train.num_nodes > 1 and not cfg.train.no_ssh:
        env["DS_ENV_FILE"] = str(write_deepspeed_env(cfg, job_path))
    launch_id = uuid.uuid4().hex
    if _leads_followers(cfg):
        _announce(cfg, job_path, num_procs, "running", launch_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run_launcher(cmd, env, log_path, progress)
    finally:
        if _leads_followers(cfg):
            _announce(cfg, job_path, num_procs, "ended", launch_id)


def _run_launcher(
    cmd: list[str], env: dict[str, str], log_path: Path, progress: Callable[[str], None] | None
) -> None:
    with log_path.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        with subprocess.Popen(
            cmd,
            env=env,
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


def follow(
    cfg: EchoConfig,
    *,
    max_jobs: int | None = None,
    poll_s: float = 1.0,
    say: Callable[[str], None] = print,
) -> int:
    """A no-ssh follower node: launch this node's side of every job node 0 announces, until
    ``max_jobs`` have run (forever when None). Returns the number of jobs run."""
    train = cfg.train
    if not (train.no_ssh and train.num_nodes > 1 and train.node_rank > 0):
        raise TrainingFailed(
            "train-node runs on the other nodes of a no-ssh run: set train.no_ssh=true, "
            f"train.num_nodes > 1 and train.node_rank > 0 (now {train.no_ssh}, {train.num_nodes}, "
            f"{train.node_rank})"
        )
    path = _announcement(cfg)
    seen: set[str] = set()
    if path.is_file():  # a job that ended before this follower started is not joined
        stale = json.loads(path.read_text())
        if stale["state"] != "running":
            seen.add(stale["id"])
    say(f"node {train.node_rank}: waiting for node 0's jobs ({path})")
    done = 0
    while max_jobs is None or done < max_jobs:
        announced = json.loads(path.read_text()) if path.is_file() else None
        if announced is None or announced["id"] in seen or announced["state"] != "running":
            time.sleep(poll_s)
            continue
        seen.add(announced["id"])
        job_path = Path(announced["job"])
        log_path = job_path.with_name(f"node{train.node_rank}-{announced['id'][:8]}.log")
        say(f"node {train.node_rank}: joining {job_path} (log: {log_path})")
        cmd = deepspeed_command(cfg, job_path, num_procs=announced["num_procs"])
        _run_launcher(cmd, training_env(cfg), log_path, None)
        done += 1
        say(f"node {train.node_rank}: {job_path.name} finished")
    return done
