"""DagBag policy: every DAG imports cleanly and cheaply, and carries what operations needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from echo_lib.core.config import load_config
from tests.conftest import REPO

# Parse the DAG folder the way the dag-processor does, counting SQL statements and heavy modules.
PARSE = """
import json, sys
from sqlalchemy import event
from airflow import settings
statements = []
event.listen(settings.engine, "before_cursor_execute", lambda *a, **k: statements.append(a[2]))
before = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before}
               & {"torch", "pyspark", "mlflow", "transformers", "deepspeed", "trl", "pandas", "datasets"})
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags),
        "max_active_runs": dag.max_active_runs,
        "doc_md": bool(dag.doc_md),
        "schedule": getattr(dag.timetable, "description", "") + " " + repr(dag.timetable) + " " + str(getattr(dag.timetable, "asset_condition", "")),
        "tasks": {t.task_id: {"retries": t.retries, "callback": bool(t.on_failure_callback),
                              "downstream": sorted(t.downstream_task_ids)} for t in dag.tasks},
    }
print(json.dumps({"dags": dags, "errors": bag.import_errors, "sql": statements, "heavy": heavy}))
"""


def parse(tmp_path: Path, **env: str) -> dict:
    from echo_lib.ops.airflow_services import environment

    cfg = load_config(overrides={"var_dir": str(tmp_path / "var")}).config
    full = {**environment(cfg), **env}
    proc = subprocess.run(
        [sys.executable, "-c", PARSE, str(REPO / "dags")],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return parse(tmp_path_factory.mktemp("dagbag"))


def test_every_dag_imports_without_errors(bag: dict) -> None:
    assert bag["errors"] == {}
    assert sorted(bag["dags"]) == ["echo_nightly", "echo_train", "echo_world"]
    for path in (REPO / "dags").glob("*.py"):
        assert path.stem in bag["dags"], f"{path.name}: one DAG per file, named after it"


def test_parsing_queries_no_database_and_imports_nothing_heavy(bag: dict) -> None:
    assert bag["sql"] == []
    assert bag["heavy"] == []


def test_operations_policy(bag: dict) -> None:
    for dag_id, dag in bag["dags"].items():
        assert "echo" in dag["tags"] and len(dag["tags"]) >= 2, dag_id
        assert dag["max_active_runs"] == 1, dag_id
        assert dag["doc_md"], dag_id
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 1, f"{dag_id}.{task_id}"
            assert task["callback"], f"{dag_id}.{task_id} has no failure callback"


def test_wiring(bag: dict) -> None:
    nightly = bag["dags"]["echo_nightly"]["tasks"]
    chain = [
        "wait_for_raw",
        "wait_for_previous_day",
        "ingest",
        "remine_previous_day",
        "mine",
        "build_dataset",
        "publish_gold",
    ]
    chain.append("expire_raw_text")
    chain.insert(0, "needs_build")
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert nightly[upstream]["downstream"] == [downstream]
    assert (
        "echo_gold" in bag["dags"]["echo_train"]["schedule"]
        or "Asset" in bag["dags"]["echo_train"]["schedule"]
    )
    assert bag["dags"]["echo_world"]["tasks"]["needs_simulation"]["downstream"] == ["simulate"]
    train = bag["dags"]["echo_train"]["tasks"]
    assert train["train"]["downstream"] == ["evaluate"] and train["evaluate"]["downstream"] == ["promote"]
    assert sorted(train["promote"]["downstream"]) == ["announce", "champion_changed"]


def test_schedule_comes_from_config_and_world_dag_can_be_disabled(tmp_path: Path) -> None:
    bag = parse(tmp_path, ECHO_AIRFLOW__NIGHTLY_CRON="30 4 * * *", ECHO_AIRFLOW__WORLD_DAG="false")
    assert sorted(bag["dags"]) == ["echo_nightly", "echo_train"]
    assert "30 4 * * *" in bag["dags"]["echo_nightly"]["schedule"]


def test_raw_sensor_logs_which_partition_it_waits_for(tmp_path: Path, monkeypatch, capsys) -> None:
    """Airflow's own sensor log says only "Poking callable: <function ...>"; ours names the partition."""
    import gzip

    from echo_lib.ops import orchestration

    lake = tmp_path / "lake"
    cfg = load_config(overrides={"var_dir": str(tmp_path / "var"), "lake.uri": str(lake)}).config
    monkeypatch.setattr(orchestration, "_config", lambda: cfg)
    assert not orchestration.raw_ready("2026-01-05")
    assert (
        f"waiting for raw telemetry for 2026-01-05: no *.jsonl.gz file in {lake}/raw/events/dt=2026-01-05"
        in (capsys.readouterr().out)
    )
    part = lake / "raw" / "events" / "dt=2026-01-05" / "part-0.jsonl.gz"
    part.parent.mkdir(parents=True)
    part.write_bytes(gzip.compress(b"{}\n"))
    assert orchestration.raw_ready("2026-01-05")
    assert "raw telemetry for 2026-01-05: 1 *.jsonl.gz files" in capsys.readouterr().out


def test_a_scheduled_run_of_a_built_day_is_a_logged_no_op(tmp_path: Path, monkeypatch, capsys) -> None:
    """Unpausing a DAG (a backfill needs it) starts the latest cron slot at once: if that day's gold
    is built from unchanged raw telemetry the run skips, saying so; a manual run or a backfill
    (explicit requests) rebuilds, and so does a scheduled run once raw telemetry changed."""
    import gzip
    import json
    import os
    import time
    from types import SimpleNamespace

    from echo_lib.ops import orchestration

    lake = tmp_path / "lake"
    cfg = load_config(overrides={"var_dir": str(tmp_path / "var"), "lake.uri": str(lake)}).config
    monkeypatch.setattr(orchestration, "_config", lambda: cfg)
    day, scheduled = "2026-01-05", SimpleNamespace(run_type="scheduled")
    raw = lake / "raw" / "events" / f"dt={day}" / "part-00000.jsonl.gz"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(gzip.compress(b"{}\n"))

    assert orchestration.nightly_needed(day, scheduled)
    assert f"gold {day} is not built yet" in capsys.readouterr().out
    assert not orchestration.world_needed(day, scheduled)
    assert f"{day} is already simulated (1 parts" in capsys.readouterr().out

    manifests = lake / "gold" / "_manifests" / f"dt={day}"
    manifests.mkdir(parents=True)
    (manifests / "_manifest.json").write_text(json.dumps({"dt": day, "dates": ["2026-01-04", day]}))
    (manifests / "_SUCCESS").touch()
    assert not orchestration.nightly_needed(day, scheduled)
    assert f"gold {day} is already built" in capsys.readouterr().out
    for kind in ("manual", "backfill"):
        assert orchestration.nightly_needed(day, SimpleNamespace(run_type=kind))
        assert orchestration.world_needed(day, SimpleNamespace(run_type=kind))
        assert f"{kind} run for {day}: an explicit run" in capsys.readouterr().out

    later = time.time() + 60
    os.utime(raw, (later, later))  # the day's telemetry changed after the build
    assert orchestration.nightly_needed(day, scheduled)
    assert "raw telemetry changed since (1 files, e.g. dt=2026-01-05/part-00000.jsonl.gz)" in (
        capsys.readouterr().out
    )
    assert orchestration.world_needed("2026-01-06", scheduled)


def test_dags_test_runs_at_the_scheduled_slot_with_their_real_start(tmp_path: Path) -> None:
    """``dags test`` of day D uses the logical date the scheduler gives D (so Airflow itself sees
    the day as done), and its run's start_date, which Airflow 3.3.2 sets to the logical date, is
    corrected to the run's real start (its run_after)."""
    import sqlite3

    from echo_lib.ops.airflow_services import record_real_start, scheduled_logical_date

    cfg = load_config(overrides={"var_dir": str(tmp_path / "var")}).config
    assert scheduled_logical_date(cfg, "2026-11-24") == "2026-11-24T02:00:00+00:00"
    assert scheduled_logical_date(cfg, "2026-11-24T05:00:00+00:00") == "2026-11-24T05:00:00+00:00"
    weekly = load_config(overrides={"var_dir": str(tmp_path / "var"), "airflow.nightly_cron": "0 3 * * 1"})
    assert scheduled_logical_date(weekly.config, "2026-11-24") == "2026-11-24T00:00:00+00:00"  # a Tuesday

    cfg.airflow_home.mkdir(parents=True)
    db = sqlite3.connect(cfg.airflow_home / "airflow.db")
    db.execute(
        "CREATE TABLE dag_run (dag_id TEXT, run_id TEXT, triggered_by TEXT, logical_date TIMESTAMP,"
        " run_after TIMESTAMP, start_date TIMESTAMP, end_date TIMESTAMP)"
    )
    rows = [  # as Airflow 3.3.2 writes them: dags test, then a scheduled run
        (
            "echo_nightly",
            "manual__a",
            "TEST",
            "2026-11-24 02:00:00.000000",
            "2026-12-01 03:52:10.046270",
            "2026-11-24 02:00:00.000000",
            "2026-12-01 03:52:15.113776",
        ),
        (
            "echo_nightly",
            "scheduled__b",
            "TIMETABLE",
            "2026-11-25 02:00:00.000000",
            "2026-11-25 02:00:00.000000",
            "2026-11-25 02:00:00.000000",
            "2026-11-25 02:01:00.000000",
        ),
    ]
    db.executemany("INSERT INTO dag_run VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    assert record_real_start(cfg, "echo_nightly") == 1
    assert record_real_start(cfg, "echo_nightly") == 0
    starts = dict(db.execute("SELECT run_id, start_date FROM dag_run"))
    assert starts == {"manual__a": "2026-12-01 03:52:10.046270", "scheduled__b": "2026-11-25 02:00:00.000000"}
