"""The promotion gate: ``echoctl promote`` and ``echoctl rollback``.

Only MLflow aliases move (``@champion``, ``@challenger``); serving resolves
``models:/<name>@champion`` at load time, so a promotion needs no code change. Every change of
``@champion`` is appended to the registry's history (:func:`echo_lib.core.registry.history`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from echo_lib.core.config import EchoConfig, PromotionSettings
from echo_lib.core.stats import signed


class GateError(RuntimeError):
    """A promotion or rollback that cannot be done (no such version, failed gate, ...)."""


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # every check, passed or not, in order
    failed: list[str] = field(default_factory=list)  # the checks that failed (a subset of reasons)

    @property
    def label(self) -> str:
        return "pass" if self.passed else "fail"

    def summary(self) -> str:
        """Verdict first, then only what failed: what a registry reader needs at a glance."""
        if self.passed:
            return f"PASS: all {len(self.reasons)} checks passed"
        return "FAIL: " + "; ".join(self.failed or self.reasons)


def failing(reason: str) -> Verdict:
    return Verdict(False, [reason], [reason])


def decide(metrics: dict[str, float], rules: PromotionSettings) -> Verdict:
    """Pure gate: the flat evaluation metrics (:func:`echo_lib.evaluation.heldout.summary_metrics`) -> verdict."""
    needed = (
        "acceptance_gain",
        "acceptance_gain_ci_low",
        "retained_gain_relative",
        "champion.offline.edit_similarity",
        "challenger.offline.edit_similarity",
        "champion.forgetting.edit_similarity",
        "challenger.forgetting.edit_similarity",
    )
    missing = [k for k in needed if k not in metrics]
    if missing:
        return failing(f"not evaluated (missing {', '.join(missing)}): run `echoctl evaluate`")
    reasons, failed = [], []

    def check(ok: bool, passed: str, fails: str) -> None:
        reasons.append(passed if ok else fails)
        if not ok:
            failed.append(fails)

    gain, low = metrics["acceptance_gain"], metrics["acceptance_gain_ci_low"]
    floor = signed(rules.min_acceptance_gain, ".2%")
    check(
        gain > rules.min_acceptance_gain,
        f"acceptance gain {signed(gain, '.2%')} > {floor}",
        f"acceptance gain {signed(gain, '.2%')} is not above {floor}",
    )
    if rules.require_ci_above_zero:
        check(
            low > 0,
            f"95% CI lower bound {signed(low, '.2%')} > 0",
            f"95% CI lower bound {signed(low, '.2%')} is not above 0",
        )
    retained = metrics["retained_gain_relative"]
    allowed = f"-{rules.max_retained_regression:.0%}"
    check(
        retained >= -rules.max_retained_regression,
        f"retained characters per request {signed(retained, '.1%')} (not below {allowed})",
        f"retained characters per request fell {signed(retained, '.1%')} (below {allowed}): users would get less",
    )
    for label, key, limit in (
        ("edit similarity", "offline.edit_similarity", rules.max_similarity_regression),
        (
            "forgetting (reserved public code) edit similarity",
            "forgetting.edit_similarity",
            rules.max_forgetting_regression,
        ),
    ):
        drop = metrics[f"champion.{key}"] - metrics[f"challenger.{key}"]
        check(
            drop <= limit,
            f"{label} change {signed(-drop, '.3f')} within -{limit:.3f}",
            f"{label} regressed by {drop:.3f} (> {limit:.3f} allowed)",
        )
    return Verdict(not failed, reasons, failed)


def without_gate(description: str | None) -> str:
    """A version's description without the gate's paragraph (the gate rewrites it each time)."""
    text = description or ""
    if text.startswith("Gate: "):
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return text.split("\n\nGate:")[0]  # where versions registered before 2026-12 had it


def eval_metrics_of(tags: dict[str, str]) -> dict[str, float]:
    """The evaluation summary ``echoctl evaluate`` stored as ``echo.eval.*`` tags on the run."""
    prefix = "echo.eval."
    out = {}
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                out[key[len(prefix) :]] = float(value)
            except ValueError:
                continue
    return out


def _move_champion(cfg: EchoConfig, version: str, *, action: str, why: str) -> dict[str, Any]:
    from echo_lib.core import registry

    previous = registry.version_by_alias(cfg, registry.CHAMPION)
    registry.client(cfg).set_registered_model_alias(cfg.mlflow.registered_model, registry.CHAMPION, version)
    return registry.record_champion_change(
        cfg,
        action=action,
        from_version=str(previous.version) if previous else None,
        to_version=version,
        why=why,
    )


# ---- commands ---------------------------------------------------------------------------------


def promote(cfg: EchoConfig, *, version: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Judge the challenger (or ``version``); record the verdict on it; move @champion if allowed.

    Idempotent: a version that is already champion is not moved again and adds no history entry.
    """
    from echo_lib.core import registry
    from echo_lib.evaluation.heldout import (
        EVAL_DIGEST_TAG,
        EvaluationError,
        evaluation_digest,
        evaluation_tags,
        resolve_version,
    )

    try:
        mv = resolve_version(cfg, version or registry.CHALLENGER)
    except EvaluationError as exc:
        raise GateError(str(exc)) from exc
    champion = registry.version_by_alias(cfg, registry.CHAMPION)
    evaluation = evaluation_tags(cfg, mv)
    verdict = decide(eval_metrics_of(evaluation), cfg.promotion)
    digest = evaluation_digest(evaluation)
    if verdict.passed and mv.tags.get(EVAL_DIGEST_TAG) != digest:
        verdict = failing(
            "the evaluation tags do not match the digest `echoctl evaluate` wrote "
            f"({EVAL_DIGEST_TAG} {mv.tags.get(EVAL_DIGEST_TAG, 'missing')}, now {digest[:12]}...): "
            "changed after the evaluation, re-evaluate"
        )
    if mv.tags.get("echo.control") == "true":
        verdict = failing("an equal-compute control model is a baseline, never promoted")
    against = evaluation.get("echo.eval.against")
    stale = champion is not None and against is not None and against != str(champion.version)
    if verdict.passed and stale and str(champion.version) != str(mv.version):
        verdict = failing(
            f"evaluated against v{against} but the champion is now v{champion.version}: re-evaluate"
        )
    enabled = cfg.promotion.enabled and not dry_run
    client, name = registry.client(cfg), cfg.mlflow.registered_model
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    # the version shows the verdict and what failed; the run keeps every check and what was read
    client.set_model_version_tag(name, str(mv.version), "echo.gate.verdict", verdict.label)
    client.set_model_version_tag(name, str(mv.version), "echo.gate.reasons", verdict.summary()[:4900])
    if mv.run_id:
        for key, value in {
            "echo.gate.verdict": verdict.label,
            "echo.gate.checks": "; ".join(verdict.reasons)[:4900],
            "echo.gate.checked_at": stamp,
            "echo.gate.eval_sha256": digest,
        }.items():
            client.set_tag(mv.run_id, key, value)
    mode = "enabled" if enabled else "dry-run"
    client.update_model_version(
        name,
        str(mv.version),
        description=f"Gate: {verdict.summary()} ({mode}, {stamp}).\n\n{without_gate(mv.description)}",
    )
    outcome = {
        "version": str(mv.version),
        "champion_before": str(champion.version) if champion else None,
        "verdict": verdict.label,
        "reasons": verdict.reasons,
        "mode": mode,
        "promoted": False,
        "history_entry": None,
    }
    if champion is not None and str(champion.version) == str(mv.version):
        outcome["reasons"] = [*verdict.reasons, f"v{mv.version} is already the champion"]
    elif verdict.passed and enabled:
        outcome["history_entry"] = _move_champion(
            cfg, str(mv.version), action="promote", why="gate passed: " + "; ".join(verdict.reasons)
        )
        outcome["promoted"] = True
    outcome["champion_after"] = str(registry.version_by_alias(cfg, registry.CHAMPION).version)
    return outcome


def rollback(cfg: EchoConfig, *, to: str | None = None, force: bool = False, why: str = "") -> dict[str, Any]:
    """Move @champion back to the previous champion (or ``to``); refuse unknown or failed versions."""
    from mlflow.exceptions import MlflowException

    from echo_lib.core import registry

    champion = registry.version_by_alias(cfg, registry.CHAMPION)
    if champion is None:
        raise GateError("no @champion to roll back")
    if to is None:
        changes = [e for e in registry.history(cfg) if e["to"] == str(champion.version) and e.get("from")]
        if not changes:
            raise GateError(f"no earlier champion recorded for v{champion.version}; give --to VERSION")
        to = changes[-1]["from"]
    client, name = registry.client(cfg), cfg.mlflow.registered_model
    try:
        target = client.get_model_version(name, str(to))
    except MlflowException as exc:
        raise GateError(f"registered model {name!r} has no version {to}") from exc
    if str(target.version) == str(champion.version):
        return {
            "from": str(champion.version),
            "to": str(target.version),
            "moved": False,
            "history_entry": None,
        }
    if target.tags.get("echo.gate.verdict") == "fail" and not force:
        raise GateError(
            f"v{target.version} failed its gate ({target.tags.get('echo.gate.reasons', '')}); use --force"
        )
    entry = _move_champion(
        cfg, str(target.version), action="rollback", why=why or f"rollback from v{champion.version}"
    )
    return {"from": str(champion.version), "to": str(target.version), "moved": True, "history_entry": entry}
