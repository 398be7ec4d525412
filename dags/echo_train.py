"""
### echo_train: refine the champion on new gold, judge it, and open the gate

Scheduled on the `echo_gold` Asset (each completed `echo_nightly` run):

1. **train**: `echoctl train` logic: warm start from `@champion`, the newest `learn.window_days`
   of gold, objective `learn.objective`, the `deepspeed` launcher with `train.num_procs` ranks;
   registers the result as `@challenger`; a retry resumes this DAG run's own training from its
   last checkpoint;
2. **evaluate**: paired held-out acceptance (same sessions and seeds for both models), offline
   metrics and the forgetting check, logged to the challenger's MLflow run and model version;
3. **promote**: the gate (`promotion.*` thresholds); moves `@champion` only when it passes and
   `promotion.enabled` is true, else records the verdict (dry run);
4. **champion_changed** (short-circuit) -> **announce**: a failed or dry-run gate is a visible,
   skipped branch in the grid, not a failed run.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from echo_lib.ops.orchestration import DAG_KWARGS, GOLD


@dag(
    dag_id="echo_train",
    schedule=[GOLD],
    **DAG_KWARGS,
    doc_md=__doc__,
    tags=["echo", "model"],
)
def echo_train():
    @task(retries=1)
    def train(run_id=None) -> dict:
        from echo_lib.ops import orchestration

        return orchestration.train(run_id)

    @task
    def evaluate(trained: dict) -> dict:
        from echo_lib.ops import orchestration

        return orchestration.evaluate(trained["version"])

    @task
    def promote(evaluation: dict, run_id=None) -> dict:
        import os

        from echo_lib.ops import orchestration

        os.environ["ECHO_ACTOR"] = f"airflow:echo_train/{run_id}"
        return orchestration.promote(evaluation["challenger_version"])

    @task.short_circuit
    def champion_changed(outcome: dict) -> bool:
        return bool(outcome["promoted"])

    @task
    def announce(outcome: dict) -> str:
        return f"@champion is now v{outcome['champion_after']} (was v{outcome['champion_before']})"

    outcome = promote(evaluate(train()))
    champion_changed(outcome) >> announce(outcome)


echo_train()
