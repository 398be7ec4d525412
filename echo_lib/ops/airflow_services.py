"""Run Airflow for Echo on this machine: ``echoctl airflow up|down|status|dags-test``.

Not ``airflow standalone`` (its log servers bind every interface): the four components are
started one by one, bound to ``airflow.host`` (127.0.0.1 by default), each in its own process
group so ``down`` stops it and all of its children. SQLite + LocalExecutor with
``airflow.parallelism`` slots; the simple auth manager stays on (user ``airflow.admin_user``,
its generated password in ``<airflow home>/simple_auth_manager_passwords.json.generated``).

Every Airflow process gets the same environment: Airflow's settings from Echo's config, and the
effective Echo config itself written to ``<airflow home>/echo.yaml`` (``ECHO_CONFIG``), so the
tasks see exactly the config the command was started with, flags included.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from echo_lib.core.config import EchoConfig
from echo_lib.ops.processes import alive, spawn, stop

COMPONENTS = {
    "api-server": lambda cfg: ["api-server", "--host", cfg.airflow.host, "--port", str(cfg.airflow.port)],
    "scheduler": lambda cfg: ["scheduler", "--skip-serve-logs"],
    "dag-processor": lambda cfg: ["dag-processor"],
    "triggerer": lambda cfg: ["triggerer", "--skip-serve-logs"],
}


class AirflowError(RuntimeError):
    pass


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _state_file(cfg: EchoConfig) -> Path:
    return cfg.airflow_home / "echo-components.json"


def environment(cfg: EchoConfig) -> dict[str, str]:
    """The environment of every Airflow process Echo starts."""
    from echo_lib.core.config import write_effective

    home = cfg.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    secret_file = home / "jwt_secret"
    if not secret_file.is_file():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    config_file = write_effective(cfg, home / "echo.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "AIRFLOW"))}
    env.update(cfg.runtime_env())
    env.update(cfg.airflow_env())
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "PYSPARK_PYTHON": sys.executable,
            "ECHO_CONFIG": str(config_file),
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def migrate(cfg: EchoConfig, env: dict[str, str] | None = None) -> None:
    env = env or environment(cfg)
    proc = subprocess.run(
        [airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AirflowError(
            f"airflow db migrate failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
        )


def status(cfg: EchoConfig) -> dict[str, Any]:
    state = json.loads(_state_file(cfg).read_text()) if _state_file(cfg).is_file() else {}
    components = {name: {"pid": pid, "running": alive(pid)} for name, pid in state.get("pids", {}).items()}
    healthy = False
    if components:
        try:
            with urllib.request.urlopen(f"{base_url(cfg)}/api/v2/monitor/health", timeout=3) as response:
                healthy = response.status == 200
        except (urllib.error.URLError, OSError):
            healthy = False
    return {"url": base_url(cfg), "components": components, "api_healthy": healthy}


def base_url(cfg: EchoConfig) -> str:
    return f"http://{cfg.airflow.host}:{cfg.airflow.port}"


def up(cfg: EchoConfig, *, wait_s: float = 120) -> dict[str, Any]:
    """Start the four components (if not already running) and wait for the API to be healthy."""
    current = status(cfg)
    if current["components"] and all(c["running"] for c in current["components"].values()):
        return current
    down(cfg)
    env = environment(cfg)
    migrate(cfg, env)
    logs = cfg.airflow_home / "logs" / "components"
    logs.mkdir(parents=True, exist_ok=True)
    pids = {
        name: spawn([airflow_bin(), *args(cfg)], log=logs / f"{name}.log", env=env, cwd=cfg.airflow_home)
        for name, args in COMPONENTS.items()
    }
    _state_file(cfg).write_text(json.dumps({"pids": pids, "started": time.time()}))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        current = status(cfg)
        dead = [n for n, c in current["components"].items() if not c["running"]]
        if dead:
            down(cfg)
            raise AirflowError(f"{', '.join(dead)} exited at start-up; see {logs}")
        if current["api_healthy"]:
            return current
        time.sleep(1)
    down(cfg)
    raise AirflowError(f"the api-server was not healthy after {wait_s:.0f} s; see {logs}")


def down(cfg: EchoConfig, *, grace_s: float = 20) -> list[str]:
    """SIGTERM each component's process group, SIGKILL what is left after ``grace_s``."""
    state_file = _state_file(cfg)
    if not state_file.is_file():
        return []
    stopped = stop(json.loads(state_file.read_text()).get("pids", {}), grace_s=grace_s)
    state_file.unlink(missing_ok=True)
    return stopped


def admin_password(cfg: EchoConfig) -> str | None:
    path = cfg.airflow_home / "simple_auth_manager_passwords.json.generated"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(cfg.airflow.admin_user)


def token(cfg: EchoConfig) -> str:
    """A JWT for the REST API, exactly as the UI's login gets one."""
    password = admin_password(cfg)
    if password is None:
        raise AirflowError("no generated admin password yet: start the api-server first")
    body = json.dumps({"username": cfg.airflow.admin_user, "password": password}).encode()
    request = urllib.request.Request(
        f"{base_url(cfg)}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["access_token"]


def scheduled_logical_date(cfg: EchoConfig, day: str) -> str:
    """The logical date the scheduler (and a backfill) gives day ``D``'s run: the first
    ``airflow.nightly_cron`` time on D, in UTC (``2026-11-24T02:00:00+00:00`` by default). A
    ``dags test`` of D at that date is then the very run Airflow would have made, so unpausing the
    DAG does not start D's scheduled run again ("run already exists; skipping") and a backfill
    with reprocess behaviour "none" leaves D alone. A full timestamp is passed through."""
    from datetime import UTC, date, datetime, timedelta

    from croniter import croniter  # Airflow's own cron library (CronTriggerTimetable)

    if "T" in day:
        return day
    midnight = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    first = croniter(cfg.airflow.nightly_cron, midnight - timedelta(microseconds=1)).get_next(datetime)
    return first.isoformat() if first.date() == midnight.date() else midnight.isoformat()


def record_real_start(cfg: EchoConfig, dag_id: str) -> int:
    """Give ``dags test`` runs of ``dag_id`` their real start; return how many rows changed.

    Airflow 3.3.2's ``DAG.test`` creates its run with ``start_date=logical_date``
    (``airflow/sdk/definitions/dag.py``, ``get_or_create_dagrun(start_date=logical_date or
    run_after)``; apache/airflow#66127): a run of a past day then lasts days in the UI (duration is
    ``end_date - start_date``) and squashes the grid's bars of real runs. ``run_after`` is the wall
    clock ``DAG.test`` read when it created the run, already RUNNING, so it is the run's real start
    (what the upstream fix records). Only runs it made (``triggered_by='TEST'``) whose start is
    still their logical date are touched."""
    import sqlalchemy as sa

    from echo_lib.core.config import SQLITE_CONNECT_ARGS

    connect_args = dict(SQLITE_CONNECT_ARGS) if cfg.airflow_on_sqlite else {}
    engine = sa.create_engine(cfg.airflow_sql_alchemy_conn, connect_args=connect_args)
    try:
        with engine.begin() as conn:
            return conn.execute(
                sa.text(
                    "UPDATE dag_run SET start_date = run_after WHERE dag_id = :dag_id"
                    " AND triggered_by = 'TEST' AND start_date = logical_date"
                ),
                {"dag_id": dag_id},
            ).rowcount
    finally:
        engine.dispose()


def dags_test(cfg: EchoConfig, dag_id: str, logical_date: str, *, log: Path) -> None:
    """``airflow dags test``: one real DAG run in-process, recorded in the metadata DB at the
    logical date the scheduler gives that day, with its real start time."""
    env = environment(cfg)
    migrate(cfg, env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(
            [airflow_bin(), "dags", "test", dag_id, scheduled_logical_date(cfg, logical_date)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            cwd=cfg.airflow_home,
        )
    record_real_start(cfg, dag_id)
    text = log.read_text(errors="replace")
    finished = [ln for ln in text.splitlines() if "DagRun Finished:" in ln]
    if proc.returncode != 0 or not finished or "state=success" not in finished[-1]:
        lines = [ln for ln in text.splitlines() if "Error" in ln or "failed" in ln.lower()]
        reason = (lines or finished or ["no DagRun finished"])[-1].strip()[:300]
        raise AirflowError(f"{dag_id} for {logical_date} failed: {reason} (log: {log})")


def run_component(cfg: EchoConfig, name: str) -> None:
    """Replace this process with one Airflow component, in Echo's Airflow environment: what a
    container of Echo's image runs (``docker/entrypoint.sh airflow-<name>``)."""
    if name not in COMPONENTS:
        raise AirflowError(f"unknown component {name!r}; choose one of {', '.join(COMPONENTS)}")
    env = environment(cfg)
    os.execve(airflow_bin(), [airflow_bin(), *COMPONENTS[name](cfg)], env)


if __name__ == "__main__":
    from echo_lib.core.config import load_config

    run_component(load_config().config, sys.argv[1])
