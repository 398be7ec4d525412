"""The MLflow model registry, the way Echo uses it: aliases, never stages.

A model version's files are a plain Hugging Face directory (``save_pretrained`` safetensors plus
the tokenizer) logged as run artifacts under ``model/``; serving loads ``models:/<name>@champion``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from echo_lib.config import EchoConfig

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
        mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        mlflow_client.create_registered_model(
            name, description="Echo's coding agent; serve models:/<name>@champion"
        )
    run = mlflow_client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    version = mlflow_client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description
    )
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version.version)
    return mlflow_client.get_model_version(name, version.version)


def model_uri(cfg: EchoConfig, alias: str = CHAMPION) -> str:
    return f"models:/{cfg.mlflow.registered_model}@{alias}"
