"""Calibrate a trained model's show policy on canary traffic, before it is registered.

A new model's confidences are not its parent's, so a threshold chosen for the parent shows a
different set of proposals for the child, and a ratio such as acceptance among shown then rewards
or punishes the change of set rather than the model. Each model version therefore carries its
own show policy (:mod:`echo_lib.agent.show_policy`), chosen by one rule on one kind of traffic:

1. **Canary traffic.** The candidate serves ``calibration.sessions`` world sessions on the
   ``calibration`` split of the team repos (files never in experience, never held out) with every
   non-blank proposal shown. Each proposal's outcome (accepted or not, characters retained) is
   what the telemetry of an exploration slice would record. The champion's canary run on the same
   sessions is measured once and cached.
2. **The policy** (``calibration.policy``): ``logistic`` learns P(accept) from the candidate's
   own outcomes (request-time features only); ``confidence`` uses the model's confidence.
3. **The threshold**: :func:`echo_lib.agent.show_policy.choose_threshold`, against the champion's
   operating point (its own policy on its own canary run): maximise the smaller of the two
   relative gains, acceptance among shown and retained characters per request.

Held-out sessions are never used here; they judge the result in ``echoctl evaluate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echo_lib.agent.show_policy import (
    ShowPolicy,
    choose_threshold,
    fit_logistic,
    operating_point,
    request_features,
)
from echo_lib.core.config import EchoConfig


def canary(cfg: EchoConfig, model_uri: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``model_uri`` on the calibration split with every proposal shown: one record per proposal
    (features, accepted, retained characters, session) and the number of requests."""
    from echo_lib.world.runner import ProgressLines, load_engine, measure_acceptance
    from echo_lib.world.simulate import retained_chars

    c = cfg.calibration
    engine = load_engine(cfg, model_uri, show_all=True)
    progress(
        f"canary: {model_uri} on {c.sessions} calibration sessions (seed {c.seed}), every proposal shown ..."
    )
    summary = measure_acceptance(
        cfg,
        engine=engine,
        split="calibration",
        sessions=c.sessions,
        seed=c.seed,
        log_to_mlflow=False,
        keep_results=True,
        on_plan=(lines := ProgressLines(progress, "canary")).plan,
        progress=lines,
    )
    records = [
        {
            "session": i,
            "features": request_features(s.prefix, s.proposal, s.confidence),
            "accepted": s.reaction.startswith("accept"),
            "retained": retained_chars(s),
        }
        for i, result in enumerate(summary.pop("results"))
        for s in result.shown
    ]
    return {"model_version": engine.model_version, "requests": summary["requests"], "records": records}


def _weights_digest(model_dir: Path) -> str:
    """What the canary depends on from a model: its weights and tokenizer files (not its policy)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name != "show_policy.json":
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _cache_path(cfg: EchoConfig, model_dir: Path) -> Path:
    from echo_lib.world.behaviour import BehaviourParams

    identity = json.dumps(
        [
            _weights_digest(model_dir),
            cfg.calibration.sessions,
            cfg.calibration.seed,
            dataclasses.asdict(BehaviourParams()),
            cfg.engine.max_new_tokens,
            cfg.corpus.model_dump(),
        ],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cfg.var_path / "cache" / "canary" / f"{digest}.json"


def cached_canary(
    cfg: EchoConfig, model_dir: Path, uri: str | None = None, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """The canary run of the weights in ``model_dir``, measured once (the world is deterministic
    given the weights, the sessions and the settings; the show policy plays no part: all is shown)."""
    path = _cache_path(cfg, model_dir)
    if path.is_file():
        progress(f"canary: {uri or model_dir} measured before, reusing {path.name}")
        return json.loads(path.read_text())
    run = canary(cfg, uri or str(model_dir), progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))
    return run


def serving_policy(cfg: EchoConfig, model_dir: Path) -> ShowPolicy:
    """The policy serving applies to a model directory under this config."""
    own = ShowPolicy.load(model_dir) if cfg.engine.show_policy == "model" else None
    return own or ShowPolicy(threshold=cfg.engine.show_threshold)


def _columns(run: dict[str, Any]):
    records = run["records"]
    return (
        [r["features"] for r in records],
        [bool(r["accepted"]) for r in records],
        [int(r["retained"]) for r in records],
    )


def _auc(labels: list[bool], scores: list[float]) -> float | None:
    if all(labels) or not any(labels):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def calibrate(
    cfg: EchoConfig,
    model_dir: Path,
    reference_version: str,
    progress: Callable[[str], None] = print,
) -> ShowPolicy:
    """Fit ``model_dir``'s show policy against the registered ``reference_version`` (the champion it
    must beat) and save it as ``show_policy.json`` in ``model_dir``."""
    from echo_lib.agent.engine import fetch_model

    name = cfg.mlflow.registered_model
    reference_dir = fetch_model(
        f"models:/{name}/{reference_version}", cfg.mlflow_tracking_uri, cfg.var_path / "cache" / "models"
    )
    reference_policy = serving_policy(cfg, reference_dir)
    ref_run = cached_canary(cfg, reference_dir, f"models:/{name}/{reference_version}", progress)
    ref_x, ref_y, ref_kept = _columns(ref_run)
    reference = operating_point(
        [reference_policy.score_features(x) for x in ref_x],
        ref_y,
        ref_kept,
        ref_run["requests"],
        reference_policy.threshold,
    )
    run = cached_canary(cfg, model_dir, progress=progress)
    x, y, kept = _columns(run)
    kind = cfg.calibration.policy
    params: dict[str, Any] = {}
    if kind == "logistic":
        try:
            params = fit_logistic(x, y, seed=cfg.learn.seed)
        except ValueError as exc:
            progress(f"show policy: {exc}; falling back to a confidence threshold")
            kind = "confidence"
    draft = ShowPolicy(threshold=0.0, kind=kind, **params)
    scores = [draft.score_features(row) for row in x]
    threshold, chosen, objective = choose_threshold(
        scores, y, kept, run["requests"], reference, min_shown_rate=cfg.calibration.min_shown_rate
    )
    confidences = [row[0] for row in x]
    calibration = {
        "reference_version": str(reference_version),
        "reference_policy": reference_policy.describe(),
        "sessions": cfg.calibration.sessions,
        "seed": cfg.calibration.seed,
        "proposals": len(y),
        "reference": reference.as_dict(),
        "chosen": chosen.as_dict(),
        "objective_min_relative_gain": objective,
        "auc_confidence": _auc(y, confidences),
        "auc_policy": _auc(y, scores),
    }
    policy = dataclasses.replace(draft, threshold=threshold, calibration=calibration)
    policy.save(model_dir)
    progress(
        f"show policy: {policy.describe()}; on canary traffic it shows {chosen.shown_rate:.1%} of requests "
        f"with acceptance {chosen.acceptance:.2%} and {chosen.retained_per_request:.3f} retained chars/request "
        f"(v{reference_version}: {reference.shown_rate:.1%}, {reference.acceptance:.2%}, "
        f"{reference.retained_per_request:.3f})"
    )
    return policy


def policy_tags(policy: ShowPolicy) -> dict[str, str]:
    """The version's one policy tag; the calibration's numbers are metrics of its run
    (:func:`calibration_metrics`) and the full record is ``show_policy.json``."""
    return {"echo.show_policy": policy.describe()}


def calibration_metrics(policy: ShowPolicy) -> dict[str, float]:
    """What calibration measured, as run metrics (``calibration.*``)."""
    c = policy.calibration
    if not c:
        return {}
    metrics = {f"calibration.{side}.{k}": v for side in ("reference", "chosen") for k, v in c[side].items()}
    metrics["calibration.objective"] = c["objective_min_relative_gain"]
    metrics["calibration.auc_confidence"] = c["auc_confidence"]
    metrics["calibration.auc_policy"] = c["auc_policy"]
    return metrics


def recalibrate(cfg: EchoConfig, version: str, against: str, progress: Callable[[str], None] = print) -> str:
    """Register a new version with ``version``'s weights and a show policy calibrated against
    ``against`` (no training): separates what a policy filters from what a model learned."""
    import shutil

    from echo_lib.agent.engine import ModelLoadError, fetch_model
    from echo_lib.core import registry
    from echo_lib.training import lifecycle

    client, name = registry.client(cfg), cfg.mlflow.registered_model
    source = fetch_model(
        f"models:/{name}/{version}", cfg.mlflow_tracking_uri, cfg.var_path / "cache" / "models"
    )
    run_id, work = lifecycle.open_run(
        cfg,
        client,
        kind="calibrate",
        run_name=f"calibrate-v{version}",
        tags={"echo.parent_version": str(version)},
    )
    try:
        with lifecycle.ending(client, run_id, ValueError, failures=(ValueError, ModelLoadError)):
            model_dir = work / "model"
            shutil.copytree(source, model_dir, dirs_exist_ok=True)
            (model_dir / "show_policy.json").unlink(missing_ok=True)
            policy = calibrate(cfg, model_dir, against, progress)
            mv = lifecycle.publish(
                cfg,
                client,
                run_id,
                model_dir=model_dir,
                metrics=calibration_metrics(policy),
                tags={
                    "echo.stage": "calibrate",
                    "echo.parent": str(version),
                    "echo.weights_of": str(version),
                    **policy_tags(policy),
                },
                description=f"v{version}'s weights with a show policy calibrated against v{against} ({policy.describe()})",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the registered copy lives in the artifact store
    return str(mv.version)
