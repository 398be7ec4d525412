"""
### echo_nightly: one day of raw telemetry -> bronze -> refinements -> gold

One run per logical date `D` (cron `airflow.nightly_cron`, default 02:00 UTC):

0. **needs_build** (short-circuit): a *scheduled* run of a date whose gold is already built
   from unchanged raw telemetry is skipped with a log line saying so (unpausing the DAG, which a
   backfill needs, starts the latest slot at once); a manual run or a backfill always rebuilds;
1. **wait_for_raw**: a reschedule-mode sensor until the collector has landed `raw/events/dt=D`
   (times out after `airflow.raw_wait_timeout_s`);
2. **wait_for_previous_day**: until the run of D-1 (if any) has built its gold. That run's mine
   reads bronze D if present and its build reads the provisional silver D-1 that step 4 rewrites,
   so runs side by side (a backfill with several active runs) must take their Spark steps in
   date order to produce what one run after another would;
3. **ingest**: `jobs/ingest_events.py --date D` (validate, quarantine, dedupe);
4. **remine_previous_day**: `jobs/mine_refinements.py --date D-1`: D-1 is complete now that its
   late events (which land in D) are ingested (the lookback rule, docs/mining.md);
5. **mine**: `jobs/mine_refinements.py --date D` (provisional until D+1 arrives);
6. **build_dataset**: `jobs/build_dataset.py --from D-1 --to D` -> `gold/*/dt=D`;
7. **publish_gold**: emits the `echo_gold` Asset with `{"dt": D, ...}`, which schedules `echo_train`;
8. **expire_raw_text**: deletes raw, bronze, silver and quarantine partitions older than
   `lake.raw_text_days` counted back from D (gold, scrubbed, stays).

Spark jobs go through `SparkSubmitOperator` on connection `echo_spark` (its master is
`spark.master` from Echo's config, `local[*]` by default). Every output is a date partition
swapped in atomically under a per-partition lease, so reruns, backfills and a manual `echoctl`
beside them never corrupt one another (docs/mining.md).
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import dag, task

from echo_lib.ops.orchestration import (
    DAG_KWARGS,
    GOLD,
    JOBS,
    dag_setting,
    expire_raw_text,
    gold_manifest,
    nightly_needed,
    previous_day_built,
    raw_ready,
)

PREVIOUS_DAY = "{{ macros.ds_add(ds, -1) }}"


def spark_job(task_id: str, job: str, args: list[str]) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(JOBS / f"{job}.py"),
        application_args=args,
        conn_id="echo_spark",
        name=f"echo-{task_id}-{{{{ ds }}}}",
        driver_memory=dag_setting("spark.driver_memory"),
    )


@dag(
    dag_id="echo_nightly",
    schedule=dag_setting("airflow.nightly_cron"),
    **DAG_KWARGS,
    doc_md=__doc__,
    tags=["echo", "data"],
)
def echo_nightly():
    @task.short_circuit
    def needs_build(ds=None, dag_run=None) -> bool:
        return nightly_needed(ds, dag_run)

    @task.sensor(
        poke_interval=60,
        timeout=dag_setting("airflow.raw_wait_timeout_s"),
        mode="reschedule",
    )
    def wait_for_raw(ds=None) -> bool:
        return raw_ready(ds)

    @task.sensor(poke_interval=20, timeout=dag_setting("airflow.raw_wait_timeout_s"), mode="reschedule")
    def wait_for_previous_day(ti=None, logical_date=None) -> bool:
        return previous_day_built(ti, logical_date)

    @task(outlets=[GOLD])
    def publish_gold(ds=None, outlet_events=None) -> dict:
        extra = gold_manifest(ds)
        outlet_events[GOLD].extra = {"dt": ds, "manifest_sha256": extra["manifest_sha256"]}
        return extra

    @task(task_id="expire_raw_text")
    def expire_old_raw_text(ds=None) -> dict:
        return expire_raw_text(ds)

    ingest = spark_job("ingest", "ingest_events", ["--date", "{{ ds }}"])
    remine = spark_job("remine_previous_day", "mine_refinements", ["--date", PREVIOUS_DAY, "--if-present"])
    mine = spark_job("mine", "mine_refinements", ["--date", "{{ ds }}"])
    build = spark_job("build_dataset", "build_dataset", ["--from", PREVIOUS_DAY, "--to", "{{ ds }}"])
    (
        needs_build()
        >> wait_for_raw()
        >> wait_for_previous_day()
        >> ingest
        >> remine
        >> mine
        >> build
        >> publish_gold()
        >> expire_old_raw_text()
    )


echo_nightly()
