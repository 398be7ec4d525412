"""
### echo_world: the simulated developers (demo configuration only)

Produces each logical date's raw telemetry with the current `@champion`, as real IDEs would: the
day's sessions on the team repos' experience split, delivered with duplicates and late events
into `raw/events/dt=D`. Same cron as `echo_nightly`, whose sensor then finds the day. A
*scheduled* run of a day already simulated is skipped (**needs_simulation**, short-circuit): a
re-simulation would replace a day that may already be built into gold; a manual run re-simulates.

Defined only when `airflow.world_dag` is true (the embedded demo default); production config sets
it false, because production telemetry comes from real users.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from echo_lib.ops.orchestration import DAG_KWARGS, dag_setting, world_needed

if dag_setting("airflow.world_dag"):

    @dag(
        dag_id="echo_world",
        schedule=dag_setting("airflow.nightly_cron"),
        **DAG_KWARGS,
        doc_md=__doc__,
        tags=["echo", "world", "demo"],
    )
    def echo_world():
        @task.short_circuit
        def needs_simulation(ds=None, dag_run=None) -> bool:
            return world_needed(ds, dag_run)

        @task
        def simulate(ds=None) -> dict:
            from echo_lib.ops import orchestration

            return orchestration.simulate(ds)

        needs_simulation() >> simulate()

    echo_world()
