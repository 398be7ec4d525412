"""MLflow wiring: one tracking/registry URI from config, experiments created on first use."""

from __future__ import annotations

from pathlib import Path

from echo_lib.core.config import EchoConfig


def configure_mlflow(cfg: EchoConfig) -> str:
    """Point this process's MLflow client at the configured store; return the experiment id."""
    import mlflow

    if cfg.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(cfg.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow_tracking_uri)
    return ensure_experiment(cfg, cfg.mlflow.experiment)


# MLflow's UI opens experiments in its GenAI (traces) view by default. The experiment declares that
# it holds model-training runs (the tag name and value are MLflow's own, ExperimentKind in its UI);
# since 3.x the UI's global GenAI / Model training switch overrides the tag, so the links Echo prints
# also carry that switch (``workflowType`` in the UI's route, read before its local storage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_WORKFLOW = "workflowType=machine_learning"


def ui_link(base: str, route: str = "experiments") -> str:
    """A link into the MLflow UI at ``base`` that opens on runs and models, not traces."""
    return f"{base.rstrip('/')}/#/{route.lstrip('/')}?{UI_WORKFLOW}"


def ensure_experiment(cfg: EchoConfig, name: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    root = cfg.mlflow_artifact_location
    # with a server and no explicit root, the server decides where artifacts go
    return client.create_experiment(
        name,
        artifact_location=f"{root.rstrip('/')}/{name}" if root else None,
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
    )
