"""
### echo_world: the simulated developers (demo configuration only)

Produces each logical date's raw telemetry with the current `@champion`, as real IDEs would: the
day's sessions on the team repos' experience split, delivered with duplicates and late events
into `raw/events/dt=D`. Same cron as `echo_nightly`, whose sensor then finds the day.

Defined only when `airflow.world_dag` is true (the embedded demo default); production config sets
it false, because production telemetry comes from real users.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from echo_lib.ops.orchestration import DAG_KWARGS, dag_setting

if dag_setting("airflow.world_dag"):

    @dag(
        dag_id="echo_world",
        schedule=dag_setting("airflow.nightly_cron"),
        **DAG_KWARGS,
        doc_md=__doc__,
        tags=["echo", "world", "demo"],
    )
    def echo_world():
        @task
        def simulate(ds=None) -> dict:
            from echo_lib.ops import orchestration

            return orchestration.simulate(ds)

        simulate()

    echo_world()
