"""One training run's lifecycle, shared by bootstrap (v0), refinement (a challenger or a baseline)
and calibration (a show policy on existing weights):

1. :func:`open_run`: an MLflow run and its work folder ``<var>/work/<kind>/<run id>``;
2. :func:`run_stage`: a job launched on the ranks, then rank 0's report;
3. :func:`publish`: metrics, the model folder and logs logged, a registered version (with an
   alias when asked), the run FINISHED;
4. :func:`ending`, around all of it: a training error ends the run FAILED (tag ``echo.error``) and
   is raised as the caller's error; anything else (Ctrl-C, a kill) ends it KILLED.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_lib.core.config import EchoConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def open_run(cfg: EchoConfig, client, *, kind: str, run_name: str, tags: dict[str, str]) -> tuple[str, Path]:
    """(run id, work folder) of a new MLflow run of this ``kind`` (bootstrap, train, calibrate)."""
    from echo_lib.core.tracking import configure_mlflow

    run = client.create_run(configure_mlflow(cfg), run_name=run_name, tags={"echo.stage": kind, **tags})
    work = cfg.var_path / "work" / kind / run.info.run_id
    work.mkdir(parents=True, exist_ok=True)
    return run.info.run_id, work


@contextmanager
def ending(
    client,
    run_id: str,
    error: type[Exception],
    *,
    failures: tuple[type[BaseException], ...] = (),
    hint: str = "",
) -> Iterator[None]:
    """End ``run_id`` FAILED on a training error (or one of ``failures``), raised again as
    ``error`` with ``hint`` appended, and KILLED on anything else that interrupts it."""
    from echo_lib.training.launch import TrainingFailed

    try:
        yield
    except (TrainingFailed, *failures) as exc:
        client.set_terminated(run_id, "FAILED")
        client.set_tag(run_id, "echo.error", str(exc)[:500])
        raise error(f"{exc}{hint}") from exc
    except BaseException:
        client.set_terminated(run_id, "KILLED")
        raise


def run_stage(
    cfg: EchoConfig,
    job_path: Path,
    log_path: Path,
    checkpoint_dir: str | Path,
    *,
    num_procs: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Launch ``job_path`` on ``num_procs`` ranks per node (output to ``log_path``); rank 0's report."""
    from echo_lib.training.launch import TrainingFailed, launch

    launch(cfg, job_path, log_path, num_procs=num_procs, progress=progress)
    report = stage_report(checkpoint_dir)
    if report is None:
        raise TrainingFailed(
            f"training exited 0 but rank 0 wrote no report in {checkpoint_dir} (log: {log_path})"
        )
    return report


def stage_report(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """Rank 0's report of a finished stage, or None if the stage has not finished."""
    path = Path(checkpoint_dir) / "reports" / "rank0.json"
    return json.loads(path.read_text()) if path.is_file() else None


def metric_batch(values: dict[str, float | None]):
    """MLflow metrics for a summary dict (None values are left out)."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [
        Metric(key=k, value=float(v), timestamp=stamp, step=0) for k, v in values.items() if v is not None
    ]


def publish(
    cfg: EchoConfig,
    client,
    run_id: str,
    *,
    model_dir: str | Path,
    metrics: dict[str, float | None],
    tags: dict[str, str],
    description: str,
    alias: str | None = None,
    logs: list[str | Path] = (),
) -> ModelVersion:
    """Log the run's metrics, model folder and logs, register the model (moving ``alias`` to it)
    and end the run FINISHED."""
    from echo_lib.core import registry

    if metrics:
        client.log_batch(run_id, metrics=metric_batch(metrics))
    client.log_artifacts(run_id, str(model_dir), registry.MODEL_ARTIFACT_PATH)
    for log in logs:
        if Path(log).is_file():
            client.log_artifact(run_id, str(log))
    version = registry.register_run_model(cfg, run_id, tags=tags, description=description, alias=alias)
    client.set_terminated(run_id, "FINISHED")
    return version
