"""What Echo's DAGs share, importable at DAG-parse time: the Asset they pass along, and the
callables their tasks run (every heavy import happens inside those, at run time).

The DAG files in ``dags/`` only wire these together.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

# One gold build per logical date; the event's extra carries {"dt": D, "manifest_sha256": ...}.
GOLD = Asset(name="echo_gold", uri="x-echo://lake/gold")

HOME = Path(os.environ.get("ECHO_HOME") or Path(__file__).resolve().parents[2])
JOBS = HOME / "jobs"

DEFAULT_ARGS = {
    "owner": "echo",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),  # doubles with exponential backoff
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
}


def dag_setting(key: str) -> Any:
    """A config value a DAG file needs at parse time (``"airflow.nightly_cron"``): from the
    environment ``echoctl airflow`` sets from the effective config (the config's own ``ECHO_*``
    names), else the config's default. No file or database is read while parsing, and no DAG file
    repeats a default."""
    from echo_lib.core.config import EchoConfig

    section, name = key.split(".")
    model = EchoConfig.model_fields[section].annotation
    variable = f"ECHO_{section.upper()}__{name.upper()}"
    given = {name: os.environ[variable]} if variable in os.environ else {}
    return getattr(model.model_validate(given), name)


def on_failure(context: dict[str, Any]) -> None:
    """Failure callback: one clear line in the task log naming the task, date and error."""
    import logging

    ti = context.get("task_instance")
    logging.getLogger("echo").error(
        "Echo task failed: %s.%s for %s (try %s): %s",
        getattr(ti, "dag_id", "?"),
        getattr(ti, "task_id", "?"),
        context.get("ds"),
        getattr(ti, "try_number", "?"),
        context.get("exception"),
    )


def _config():
    from echo_lib.core.config import load_config

    return load_config().config


# What every Echo DAG shares: one run at a time, no implicit catch-up (backfills are explicit),
# retries with backoff and the failure callback on every task.
DAG_KWARGS: dict[str, Any] = {
    "start_date": datetime(2026, 1, 1),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": {**DEFAULT_ARGS, "on_failure_callback": on_failure},
}


# ---- echo_nightly ---------------------------------------------------------------------------------


def raw_files(lake: str, ds: str) -> list[Any]:
    """The ``*.jsonl.gz`` files (pyarrow FileInfo) of the raw partition of ``ds``."""
    import pyarrow.fs as pafs

    from echo_lib.core.lake import arrow_fs

    fs, root = arrow_fs(lake)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/raw/events/dt={ds}", allow_not_found=True))
    return [i for i in infos if i.base_name.endswith(".jsonl.gz")]


def _run_type(dag_run: Any) -> str:
    kind = getattr(dag_run, "run_type", "")
    return str(getattr(kind, "value", kind))


def nightly_needed(ds: str, dag_run: Any) -> bool:
    """Short-circuit body, echo_nightly's first task: False (skip the run) only for a *scheduled*
    run of a date whose gold is complete and whose raw telemetry (the build's dates) has not
    changed since that build. Unpausing a DAG (which a backfill needs) makes the scheduler start
    the latest cron slot at once (catchup=False), often a day already built; a manual run or a
    backfill is an explicit request and always (re)builds."""
    from echo_lib.core.lake import arrow_fs, gold_dates, read_manifest

    kind = _run_type(dag_run)
    if kind != "scheduled":
        print(f"{kind} run for {ds}: an explicit run, building gold {ds}")
        return True
    lake = _config().lake_uri
    if ds not in gold_dates(lake):
        print(f"gold {ds} is not built yet: building it")
        return True
    fs, root = arrow_fs(lake)
    built = fs.get_file_info(f"{root}/gold/_manifests/dt={ds}/_SUCCESS").mtime
    changed = [
        f"dt={day}/{info.base_name}"
        for day in read_manifest(lake, ds).get("dates", [ds])
        for info in raw_files(lake, day)
        if info.mtime and info.mtime > built
    ]
    if changed:
        print(
            f"gold {ds} was built at {built:%Y-%m-%d %H:%M:%S} UTC but raw telemetry changed since "
            f"({len(changed)} files, e.g. {changed[0]}): rebuilding"
        )
        return True
    print(
        f"gold {ds} is already built (at {built:%Y-%m-%d %H:%M:%S} UTC) from the raw telemetry now in "
        f"{lake.rstrip('/')}/raw/events: skipping this scheduled run. To rebuild {ds}, trigger "
        f"echo_nightly for it or backfill it with reprocess behaviour 'completed' (All Runs)"
    )
    return False


def raw_ready(ds: str) -> bool:
    """Sensor body: has the collector landed any telemetry for ``ds``?"""
    lake = _config().lake_uri
    files = raw_files(lake, ds)
    where = f"{lake.rstrip('/')}/raw/events/dt={ds}"
    if files:
        print(
            f"raw telemetry for {ds}: {len(files)} *.jsonl.gz files ({sum(i.size for i in files):,} bytes) in {where}"
        )
    else:
        print(f"waiting for raw telemetry for {ds}: no *.jsonl.gz file in {where} yet")
    return bool(files)


#: task states after which a run of D-1 will not touch silver D-1 again
FINISHED = ["success", "failed", "skipped", "upstream_failed", "removed"]


def previous_day_built(ti: Any, logical_date: datetime) -> bool:
    """Sensor body: has the run of D-1 finished building gold (or is there none)?

    The run of D-1 mines D-1 with bronze D if it is there (the lookback rule) and builds gold from
    the provisional silver D-1 that run D re-mines: two runs side by side (a backfill with several
    active runs) must take their Spark steps in date order, or gold would depend on timing."""
    previous = logical_date - timedelta(days=1)
    if ti.get_dr_count(dag_id=ti.dag_id, logical_dates=[previous]) == 0:
        print(f"no run of {previous.date()}: nothing to wait for")
        return True
    done = ti.get_ti_count(
        dag_id=ti.dag_id, task_ids=["build_dataset"], logical_dates=[previous], states=FINISHED
    )
    print(f"the run of {previous.date()} has {'finished' if done else 'not finished'} build_dataset")
    return done > 0


def gold_manifest(ds: str) -> dict[str, Any]:
    """The gold build of ``ds`` (fails if build-dataset did not complete it)."""
    from echo_lib.core.lake import gold_dates, read_manifest

    lake = _config().lake_uri
    if ds not in gold_dates(lake):
        raise RuntimeError(f"no complete gold build for {ds} in {lake}")
    manifest = read_manifest(lake, ds)
    rows = {name: d["rows"] for name, d in manifest["datasets"].items()}
    print(f"gold {ds} in {lake}: " + ", ".join(f"{name} {n:,} rows" for name, n in rows.items()))
    print(f"manifest sha256 {manifest['sha256']}; MLflow: {build_run_link(manifest['sha256'])}")
    return {"dt": ds, "manifest_sha256": manifest["sha256"], "rows": rows, "funnel": manifest["funnel"]}


def build_run_link(manifest_sha256: str) -> str:
    """Where the build's MLflow run is (the UI's address when the store is a server)."""
    from echo_lib.core import registry
    from echo_lib.core.tracking import configure_mlflow, ui_link

    cfg = _config()
    try:  # a link is a courtesy: an MLflow hiccup must not stop the gold Asset from being emitted
        experiment_id = configure_mlflow(cfg)
        runs = registry.client(cfg).search_runs(
            [experiment_id], filter_string=f"tags.`echo.manifest_sha256` = '{manifest_sha256}'", max_results=1
        )
    except Exception as exc:  # noqa: BLE001
        return f"not looked up ({type(exc).__name__}: {exc})"
    if not runs:
        return "no build run found"
    route = f"experiments/{experiment_id}/runs/{runs[0].info.run_id}"
    uri = cfg.mlflow_tracking_uri
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"  # `make mlflow` serves a local store
    return ui_link(base, route)


def expire_raw_text(ds: str) -> dict[str, Any]:
    """Delete the raw-text partitions that ``lake.raw_text_days`` no longer allows at ``ds``."""
    from echo_lib.mining.retention import expire_raw_text as expire
    from echo_lib.mining.retention import summary

    cfg = _config()
    days = cfg.lake.raw_text_days
    result = {"as_of": ds, "days": days, "deleted": expire(cfg.lake_uri, ds, days)}
    print(summary(result))
    return result


# ---- echo_world -----------------------------------------------------------------------------------


def world_needed(ds: str, dag_run: Any) -> bool:
    """Short-circuit body, echo_world's first task: False (skip the run) only for a *scheduled*
    run of a day whose telemetry is already simulated. A re-simulation would replace the day's raw
    parts with traffic from today's @champion (and so change a day already built into gold); a
    manual run or a backfill is an explicit request and always simulates."""
    kind = _run_type(dag_run)
    if kind != "scheduled":
        print(f"{kind} run for {ds}: an explicit run, simulating {ds}")
        return True
    lake = _config().lake_uri
    parts = [i for i in raw_files(lake, ds) if i.base_name.startswith("part-0")]  # the world's own parts
    if not parts:
        print(f"{ds} is not simulated yet: simulating it")
        return True
    print(
        f"{ds} is already simulated ({len(parts)} parts in {lake.rstrip('/')}/raw/events/dt={ds}): "
        f"skipping this scheduled run. To re-simulate it, trigger echo_world for {ds}"
    )
    return False


def simulate(ds: str) -> dict[str, Any]:
    from datetime import date

    from echo_lib.world.runner import DAY_SUMMARY, ProgressLines, simulate_day

    lines = ProgressLines(print, f"world {ds}")  # Airflow's task log shows the world's pace
    summary = simulate_day(_config(), date.fromisoformat(ds), on_plan=lines.plan, progress=lines)
    return {k: summary[k] for k in DAY_SUMMARY}


# ---- echo_train -----------------------------------------------------------------------------------


def train(dag_run_id: str | None = None) -> dict[str, Any]:
    """Train a challenger; a retry of the same DAG run resumes that run's training (its own
    resume pointer), never another run's or the CLI's."""
    import dataclasses

    from echo_lib.training.refine import resume_pointer
    from echo_lib.training.refine import train as run_train

    cfg = _config()
    owner = f"airflow-{dag_run_id}" if dag_run_id else "airflow"
    resume = resume_pointer(cfg, owner).is_file()
    return dataclasses.asdict(run_train(cfg, owner=owner, resume=resume))


def evaluate(challenger: str) -> dict[str, Any]:
    from echo_lib.evaluation.heldout import evaluate as run_evaluate
    from echo_lib.evaluation.heldout import summary_metrics

    report = run_evaluate(_config(), challenger=challenger)
    online = (
        "acceptance_rate",
        "ci_low",
        "ci_high",
        "retained_per_request",
        "retained_ci_low",
        "retained_ci_high",
    )
    return {
        "champion_version": report["champion_version"],
        "challenger_version": report["challenger_version"],
        "metrics": summary_metrics(report),
        "champion_online": {k: report["champion"]["online"][k] for k in online},
        "challenger_online": {k: report["challenger"]["online"][k] for k in online},
    }


def promote(version: str) -> dict[str, Any]:
    from echo_lib.evaluation.gate import promote as run_promote

    return run_promote(_config(), version=version)
