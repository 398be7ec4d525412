"""The MLflow model registry, the way Echo uses it: aliases, never stages.

A model version's files are a plain Hugging Face directory (``save_pretrained`` safetensors plus
the tokenizer) logged as run artifacts under ``model/``; serving loads ``models:/<name>@champion``.

MLflow keeps no history of alias moves, so every change of ``@champion`` is written as its own
small artifact (``history/<ns>-<id>.json``) of a dedicated MLflow run (tag
``echo.stage=registry-history``) in the tracking store: it survives restarts and travels with the
store, and an append never rewrites what is there, so two concurrent changes cannot lose each
other's entries.
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_lib.core.config import EchoConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT_PATH = "model"


def client(cfg: EchoConfig):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.mlflow_tracking_uri)


def is_not_found(exc: Exception) -> bool:
    """MLflow's "no such model" or "no such alias", as opposed to a registry that failed. Stores
    report a missing alias as INVALID_PARAMETER_VALUE "... alias X not found."."""
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()
    )


def version_by_alias(cfg: EchoConfig, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at; None only when the model or alias does not exist. Any
    other registry error is raised: read as "no champion" it would let bootstrap register a
    second one."""
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_model_version_by_alias(cfg.mlflow.registered_model, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def register_run_model(
    cfg: EchoConfig, run_id: str, *, tags: dict[str, str], description: str, alias: str | None = None
) -> ModelVersion:
    """Register the ``model/`` artifacts of ``run_id`` as a new version (and point ``alias`` at it)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(cfg)
    name = cfg.mlflow.registered_model
    try:
        model = mlflow_client.get_registered_model(name)
        if "<name>" in (model.description or ""):  # stores made before the description rendered
            mlflow_client.update_registered_model(name, description=model_description(name))
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        mlflow_client.create_registered_model(name, description=model_description(name))
    run = mlflow_client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    version = mlflow_client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description
    )
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version.version)
    return mlflow_client.get_model_version(name, version.version)


def model_description(name: str) -> str:
    """The registered model's description (Markdown in the UI: no ``<...>``, it would be read as
    HTML)."""
    return (
        f"Echo's coding agent. Serving loads `models:/{name}@champion`; `@challenger` is the version "
        "the gate judges next. Each version's description starts with its gate verdict."
    )


def model_uri(cfg: EchoConfig, alias: str = CHAMPION) -> str:
    return f"models:/{cfg.mlflow.registered_model}@{alias}"


HISTORY_RUN = "registry-history"
HISTORY_DIR = "history"  # one artifact per entry
LEGACY_HISTORY_FILE = "history.jsonl"  # stores written before entries were separate files


def versions_trained_on(cfg: EchoConfig, gold_dates: list[str]) -> list[dict[str, str]]:
    """Model versions whose training window (tag ``echo.gold_dates``) includes one of ``gold_dates``."""
    wanted = set(gold_dates)
    found = []
    for mv in client(cfg).search_model_versions(f"name='{cfg.mlflow.registered_model}'"):
        dates = set(filter(None, mv.tags.get("echo.gold_dates", "").split(",")))
        if dates & wanted:
            found.append({"version": str(mv.version), "gold_dates": ",".join(sorted(dates & wanted))})
    return sorted(found, key=lambda v: int(v["version"]))


# ---- history -----------------------------------------------------------------------------------


def _history_run_ids(cfg: EchoConfig, create: bool) -> list[str]:
    """The history runs, oldest first (two first writers racing may each create one: both count)."""
    from echo_lib.core.tracking import configure_mlflow

    mlflow_client = client(cfg)
    experiment_id = configure_mlflow(cfg)
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`echo.stage` = '{HISTORY_RUN}'",
        order_by=["attributes.start_time ASC"],
    )
    if runs or not create:
        return [r.info.run_id for r in runs]
    run = mlflow_client.create_run(experiment_id, run_name=HISTORY_RUN, tags={"echo.stage": HISTORY_RUN})
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    return [run.info.run_id]


def history(cfg: EchoConfig) -> list[dict[str, Any]]:
    """Every change of @champion, oldest first."""
    mlflow_client = client(cfg)
    named: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, run_id in enumerate(_history_run_ids(cfg, create=False)):
            listed = {f.path for f in mlflow_client.list_artifacts(run_id)}
            if LEGACY_HISTORY_FILE in listed:
                path = Path(mlflow_client.download_artifacts(run_id, LEGACY_HISTORY_FILE, f"{tmp}/{k}"))
                lines = [line for line in path.read_text().splitlines() if line.strip()]
                named += [(f"{0:020d}-{i:08d}", json.loads(line)) for i, line in enumerate(lines)]
            if HISTORY_DIR in listed:
                folder = Path(mlflow_client.download_artifacts(run_id, HISTORY_DIR, f"{tmp}/{k}"))
                named += [(p.stem, json.loads(p.read_text())) for p in folder.glob("*.json")]
    return [entry for _, entry in sorted(named, key=lambda item: item[0])]


def _append_history(cfg: EchoConfig, entry: dict[str, Any]) -> None:
    """One new artifact per entry, named by the time it was written: nothing is read and
    rewritten, so concurrent appends all survive."""
    run_id = _history_run_ids(cfg, create=True)[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"
        path.write_text(json.dumps(entry, sort_keys=True))
        client(cfg).log_artifact(run_id, str(path), HISTORY_DIR)
    client(cfg).set_registered_model_tag(
        cfg.mlflow.registered_model, "echo.last_champion_change", json.dumps(entry, sort_keys=True)[:4900]
    )


def actor() -> str:
    """Who: ECHO_ACTOR (Airflow sets the DAG run), else the OS user."""
    try:
        return os.environ.get("ECHO_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record_champion_change(
    cfg: EchoConfig, *, action: str, from_version: str | None, to_version: str, why: str
) -> dict[str, Any]:
    """Append one change of @champion (made by the caller) to the history."""
    entry = {
        "action": action,
        "from": from_version,
        "to": str(to_version),
        "who": actor(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "why": why,
    }
    _append_history(cfg, entry)
    return entry
