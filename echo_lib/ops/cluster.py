"""Cluster mode on one machine: ``echoctl cluster up|down|status``.

The topology a cluster runs, as real processes on 127.0.0.1, each in its own process group with
its log under ``<var>/cluster/logs``:

- **PostgreSQL** holding two databases, ``mlflow`` and ``airflow``;
- an **MLflow tracking server** on it, storing artifacts in ``<var>/cluster/mlflow-artifacts``
  (clients upload through ``mlflow-artifacts:/``, never to a path of their own);
- a **Spark standalone master** and N **workers** (1 core, 512 MiB each by default);
- optionally **Airflow** (api-server, scheduler, dag-processor, triggerer) on PostgreSQL.

``up`` writes ``<var>/cluster/echo-cluster.yaml``, the configuration that points Echo at it
(``echoctl --config <var>/cluster/echo-cluster.yaml ...`` or ``ECHO_CONFIG``). Nothing in Echo's
code changes between this and a real cluster: only the addresses in that file.

PostgreSQL refuses to run as root; as root its server runs as the ``postgres`` user, with its data
in a folder that user can reach (``/tmp/echo-pg-<hash of var>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from echo_lib.core.config import EchoConfig, with_overrides
from echo_lib.ops import processes

POSTGRES_USER = "echo"
DATABASES = ("mlflow", "airflow")


class ClusterError(RuntimeError):
    """The topology could not start or is not running; the message names the log to read."""


def cluster_dir(cfg: EchoConfig) -> Path:
    return cfg.var_path / "cluster"


def config_path(cfg: EchoConfig) -> Path:
    return cluster_dir(cfg) / "echo-cluster.yaml"


def _state_path(cfg: EchoConfig) -> Path:
    return cluster_dir(cfg) / "state.json"


def _pg_bin(name: str) -> str:
    """PostgreSQL's server binaries (Debian keeps them off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise ClusterError(f"PostgreSQL's {name} was not found (install postgresql, 15 or newer)")


def _pg_run_as() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


def _pg_data_dir(cfg: EchoConfig) -> Path:
    if _pg_run_as() is None:
        return cluster_dir(cfg) / "postgres"
    digest = hashlib.sha1(str(cfg.var_path.resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"echo-pg-{digest}"


def _venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive_workers(master_ui: str) -> int:
    try:
        with urllib.request.urlopen(f"{master_ui}/json/", timeout=2) as response:
            return int(json.loads(response.read()).get("aliveworkers", 0))
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def _pg_ready(port: int) -> bool:
    command = [_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER]
    return subprocess.run(command, check=False).returncode == 0


def _pg_url(port: int, database: str) -> str:
    return f"postgresql+psycopg2://{POSTGRES_USER}@127.0.0.1:{port}/{database}"


def cluster_config(cfg: EchoConfig, state: dict[str, Any]) -> dict[str, Any]:
    """The settings that point Echo at the running topology (what ``echo-cluster.yaml`` holds)."""
    ports = state["ports"]
    memory = state["worker_memory"]
    return {
        "spark": {
            "master": f"spark://127.0.0.1:{ports['spark']}",
            "driver_host": "127.0.0.1",
            "driver_memory": "1g",
            "conf": {"spark.executor.memory": memory, "spark.executor.cores": str(state["worker_cores"])},
        },
        "mlflow": {"tracking_uri": f"http://127.0.0.1:{ports['mlflow']}"},
        "airflow": {"sql_alchemy_conn": _pg_url(ports["postgres"], "airflow")},
    }


def effective(cfg: EchoConfig, state: dict[str, Any] | None = None) -> EchoConfig:
    """``cfg`` pointed at the running topology."""
    state = state or read_state(cfg)
    flat: dict[str, Any] = {}
    for section, values in cluster_config(cfg, state).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return with_overrides(cfg, flat)


def read_state(cfg: EchoConfig) -> dict[str, Any]:
    path = _state_path(cfg)
    if not path.is_file():
        raise ClusterError("no cluster is running here: start one with `echoctl cluster up`")
    return json.loads(path.read_text())


def _start_postgres(cfg: EchoConfig, port: int, logs: Path, register) -> int:
    data = _pg_data_dir(cfg)
    user = _pg_run_as()
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(data, user, user)
        proc = subprocess.run(
            [_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", POSTGRES_USER, "-E", "UTF8"],
            capture_output=True,
            text=True,
            user=user,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(f"initdb failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    options = ["-k", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    log = logs / "postgres.log"
    pid = processes.spawn([_pg_bin("postgres"), "-D", str(data), *options], log=log, user=user)
    register("postgres", pid)
    processes.wait_until(
        lambda: _pg_ready(port),
        what="PostgreSQL",
        timeout_s=60,
        pid=pid,
        log=log,
    )
    import psycopg2

    con = psycopg2.connect(host="127.0.0.1", port=port, user=POSTGRES_USER, dbname="postgres")
    con.autocommit = True  # CREATE DATABASE runs outside a transaction
    try:
        with con.cursor() as cur:
            for database in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        con.close()
    return pid


def up(
    cfg: EchoConfig,
    *,
    workers: int = 2,
    worker_cores: int = 1,
    worker_memory: str = "512m",
    airflow: bool = False,
    say=print,
) -> dict[str, Any]:
    """Start the topology (a running one is left as it is) and write its config file."""
    if _state_path(cfg).is_file():
        current = status(cfg)
        if current["healthy"]:
            say("the cluster is already running")
            return current
        down(cfg)
    root = cluster_dir(cfg)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    from echo_lib.training.launch import free_port

    ports = {
        name: free_port()
        for name in ("postgres", "mlflow", "spark", "spark_ui", *(f"worker_ui_{i}" for i in range(workers)))
    }
    state: dict[str, Any] = {
        "ports": ports,
        "workers": workers,
        "worker_cores": worker_cores,
        "worker_memory": worker_memory,
        "pids": {},
        "seconds": {},
        "started": time.time(),
    }

    def record() -> None:
        _state_path(cfg).write_text(json.dumps(state, indent=2))

    def register(name: str, pid: int) -> None:  # before waiting on it: a failed up stops it
        state["pids"][name] = pid
        record()

    def started(name: str, pid: int, began: float) -> None:
        state["pids"][name] = pid
        state["seconds"][name] = round(time.monotonic() - began, 1)
        record()
        say(f"{name}: up in {state['seconds'][name]:.1f} s (pid {pid})")

    try:
        began = time.monotonic()
        started("postgres", _start_postgres(cfg, ports["postgres"], logs, register), began)

        began = time.monotonic()
        artifacts = root / "mlflow-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        log = logs / "mlflow.log"
        pid = processes.spawn(
            [
                _venv_bin("mlflow"),
                "server",
                "--backend-store-uri",
                _pg_url(ports["postgres"], "mlflow"),
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            log=log,
            env={**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
        )
        register("mlflow", pid)
        processes.wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{ports['mlflow']}/health"),
            what="the MLflow server",
            timeout_s=120,
            pid=pid,
            log=log,
        )
        started("mlflow", pid, began)

        began = time.monotonic()
        import pyspark

        spark_env = {
            **os.environ,
            "SPARK_HOME": str(Path(pyspark.__file__).parent),  # the wheel is a Spark distribution
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
        }
        master = f"spark://127.0.0.1:{ports['spark']}"
        master_ui = f"http://127.0.0.1:{ports['spark_ui']}"
        log = logs / "spark-master.log"
        pid = processes.spawn(
            [
                _venv_bin("spark-class"),
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["spark"]),
                "--webui-port",
                str(ports["spark_ui"]),
            ],
            log=log,
            env=spark_env,
        )
        register("spark-master", pid)
        processes.wait_until(
            lambda: _http_ok(f"{master_ui}/json/"), what="the Spark master", timeout_s=120, pid=pid, log=log
        )
        started("spark-master", pid, began)
        began = time.monotonic()
        for i in range(workers):
            work_dir = root / "spark" / f"worker-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            state["pids"][f"spark-worker-{i}"] = processes.spawn(
                [
                    _venv_bin("spark-class"),
                    "org.apache.spark.deploy.worker.Worker",
                    master,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(worker_cores),
                    "--memory",
                    worker_memory,
                    "--work-dir",
                    str(work_dir),
                    "--webui-port",
                    str(ports[f"worker_ui_{i}"]),
                ],
                log=logs / f"spark-worker-{i}.log",
                env=spark_env,
            )
        record()
        processes.wait_until(
            lambda: _alive_workers(master_ui) >= workers,
            what=f"{workers} Spark worker(s)",
            timeout_s=120,
            log=logs,
        )
        state["seconds"]["spark-workers"] = round(time.monotonic() - began, 1)
        say(f"{workers} Spark worker(s): registered in {state['seconds']['spark-workers']:.1f} s")

        config_path(cfg).write_text(
            "# Echo pointed at `echoctl cluster up`'s topology; written by it, rewritten on each up.\n"
            + yaml.safe_dump(cluster_config(cfg, state), sort_keys=True)
        )
        if airflow:
            from echo_lib.ops import airflow_services

            began = time.monotonic()
            airflow_services.up(effective(cfg, state))
            state["airflow"] = True
            state["seconds"]["airflow"] = round(time.monotonic() - began, 1)
            say(f"airflow on PostgreSQL: up in {state['seconds']['airflow']:.1f} s")
        record()
    except BaseException:
        down(cfg)
        raise
    return status(cfg)


def status(cfg: EchoConfig) -> dict[str, Any]:
    """Each process's state, each service's health, the UIs' addresses."""
    state = read_state(cfg)
    ports = state["ports"]
    components = {name: {"pid": pid, "running": processes.alive(pid)} for name, pid in state["pids"].items()}
    master_ui = f"http://127.0.0.1:{ports['spark_ui']}"
    health = {
        "postgres": _pg_ready(ports["postgres"]),
        "mlflow": _http_ok(f"http://127.0.0.1:{ports['mlflow']}/health"),
        "spark": _alive_workers(master_ui) >= state["workers"],
    }
    urls = {"mlflow": f"http://127.0.0.1:{ports['mlflow']}", "spark": master_ui}
    if state.get("airflow"):
        from echo_lib.ops import airflow_services

        airflow = airflow_services.status(effective(cfg, state))
        health["airflow"] = airflow["api_healthy"]
        urls["airflow"] = airflow["url"]
    return {
        "components": components,
        "health": health,
        "healthy": all(health.values()) and all(c["running"] for c in components.values()),
        "urls": urls,
        "config": str(config_path(cfg)),
        "seconds": state["seconds"],
    }


def down(cfg: EchoConfig) -> list[str]:
    """Stop Airflow (if it was started), the Spark workers and master, MLflow, then PostgreSQL."""
    path = _state_path(cfg)
    if not path.is_file():
        return []
    state = json.loads(path.read_text())
    stopped = []
    if state.get("airflow"):
        from echo_lib.ops import airflow_services

        stopped += [f"airflow {name}" for name in airflow_services.down(effective(cfg, state))]
    pids = state["pids"]
    # PostgreSQL last, with a fast shutdown (SIGINT): its clients go first
    stopped += processes.stop({k: v for k, v in pids.items() if k != "postgres"}, grace_s=20)
    if "postgres" in pids:
        stopped += processes.stop({"postgres": pids["postgres"]}, signals={"postgres": signal.SIGINT})
    path.unlink()
    return stopped
