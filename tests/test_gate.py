"""The judge and the door: gate decisions, paired CI, promotion/rollback on a real SQLite registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_lib.core.config import PromotionSettings, load_config
from echo_lib.core.stats import signed
from echo_lib.evaluation.gate import decide
from echo_lib.evaluation.heldout import (
    EVAL_DIGEST_TAG,
    chrf,
    evaluation_digest,
    paired_gains,
    summary_metrics,
)
from tests.conftest import copy_var, run_echoctl


def _metrics(
    gain=0.02, ci_low=0.005, sim=(0.40, 0.41), forget=(0.30, 0.30), retained=0.05
) -> dict[str, float]:
    return {
        "acceptance_gain": gain,
        "acceptance_gain_ci_low": ci_low,
        "acceptance_gain_ci_high": gain + 0.01,
        "retained_gain_relative": retained,
        "champion.offline.edit_similarity": sim[0],
        "challenger.offline.edit_similarity": sim[1],
        "champion.forgetting.edit_similarity": forget[0],
        "challenger.forgetting.edit_similarity": forget[1],
    }


# ---- pure decisions --------------------------------------------------------------------------


def test_gate_passes_a_clear_gain_without_regressions() -> None:
    verdict = decide(_metrics(), PromotionSettings())
    assert verdict.passed and verdict.label == "pass"
    assert any("95% CI lower bound +0.50% > 0" in r for r in verdict.reasons)


def test_gate_fails_when_the_ci_touches_zero() -> None:
    verdict = decide(_metrics(ci_low=-0.001), PromotionSettings())
    assert not verdict.passed and any("is not above 0" in r for r in verdict.reasons)
    # the same numbers pass when the rule is switched off in config
    assert decide(_metrics(ci_low=-0.001), PromotionSettings(require_ci_above_zero=False)).passed


def test_gate_fails_on_a_regression_despite_a_gain() -> None:
    forgot = decide(_metrics(forget=(0.30, 0.25)), PromotionSettings())
    assert not forgot.passed and any("edit similarity regressed by 0.050" in r for r in forgot.reasons)
    # winning the ratio by giving users less is not a win
    less = decide(_metrics(retained=-0.03), PromotionSettings())
    assert not less.passed and any("users would get less" in r for r in less.reasons)
    assert decide(_metrics(retained=-0.03), PromotionSettings(max_retained_regression=0.05)).passed
    worse = decide(_metrics(sim=(0.40, 0.30)), PromotionSettings())
    assert not worse.passed and any("edit similarity regressed by 0.100" in r for r in worse.reasons)
    assert not decide(_metrics(gain=0.0, ci_low=0.0), PromotionSettings()).passed


def test_gate_summary_leads_with_the_verdict_and_lists_only_failures() -> None:
    both = decide(_metrics(ci_low=-0.001, forget=(0.30, 0.25)), PromotionSettings())
    assert both.summary() == (
        "FAIL: 95% CI lower bound -0.10% is not above 0; "
        "forgetting (reserved public code) edit similarity regressed by 0.050 (> 0.020 allowed)"
    )
    assert decide(_metrics(), PromotionSettings()).summary() == "PASS: all 5 checks passed"
    # a change that rounds to zero reads +0.000, never -0.000
    unchanged = decide(_metrics(sim=(0.40, 0.4000001)), PromotionSettings())
    assert any(r.startswith("edit similarity change +0.000") for r in unchanged.reasons)
    assert signed(-0.00001, ".3f") == "+0.000" and signed(-0.004, ".2%") == "-0.40%"


def test_gate_fails_an_unevaluated_version() -> None:
    verdict = decide({}, PromotionSettings())
    assert not verdict.passed and "not evaluated" in verdict.reasons[0]


def _sessions(rows):
    return [
        {"session_id": f"s{i}", "requests": r, "shown": n, "accepted": a, "retained_chars": k}
        for i, (r, n, a, k) in enumerate(rows)
    ]


def test_paired_gains_on_known_cases() -> None:
    base = _sessions([(20, 10, 1, 5), (20, 10, 2, 9), (9, 5, 0, 0), (30, 12, 3, 12)])
    exact = paired_gains(base, base)
    for gain in exact.values():
        assert (gain["value"], gain["ci_low"], gain["ci_high"], gain["sessions"]) == (0.0, 0.0, 0.0, 4)
    # every session gains one acceptance and 4 retained characters on the same shown proposals
    better = _sessions(
        [
            (r, n, a + 1, k + 4)
            for r, n, a, k in [(20, 10, 1, 5), (20, 10, 2, 9), (9, 5, 0, 0), (30, 12, 3, 12)]
        ]
    )
    shifted = paired_gains(base, better)
    assert shifted["acceptance"]["value"] == pytest.approx(4 / 37)
    assert (
        0
        < shifted["acceptance"]["ci_low"]
        <= shifted["acceptance"]["value"]
        <= shifted["acceptance"]["ci_high"]
    )
    assert shifted["retained"]["value"] == pytest.approx(16 / 79)
    assert shifted["retained"]["relative"] == pytest.approx(16 / 26)
    assert shifted["shown_rate"]["value"] == 0.0
    with pytest.raises(ValueError, match="same, non-empty"):
        paired_gains(base, base[:2])


def test_chrf_bounds() -> None:
    assert chrf("foo(bar)", "foo(bar)") == 1.0
    assert chrf("xyz", "abc") == 0.0
    assert 0 < chrf("foo(baz)", "foo(bar)") < 1


# ---- a real registry --------------------------------------------------------------------------


@pytest.fixture
def registry_var(bootstrapped: dict, tmp_path: Path) -> Path:
    """The bootstrapped store (v1 champion) plus v2 (good) and v3 (regressed), real versions."""
    from echo_lib.core import registry

    var = tmp_path / "var"
    copy_var(bootstrapped["var"], var)
    cfg = load_config(overrides={"var_dir": str(var)}).config
    from echo_lib.agent.engine import fetch_model
    from echo_lib.core.tracking import configure_mlflow

    client, name = registry.client(cfg), cfg.mlflow.registered_model
    weights = fetch_model(f"models:/{name}@champion", cfg.mlflow_tracking_uri, tmp_path / "cache")
    for number, metrics in (("2", _metrics()), ("3", _metrics(forget=(0.10, 0.01)))):
        # each version has its own run, as training gives it: the evaluation's tags live there
        run_id = client.create_run(configure_mlflow(cfg), run_name=f"v{number}").info.run_id
        client.log_artifacts(run_id, str(weights), registry.MODEL_ARTIFACT_PATH)
        mv = registry.register_run_model(cfg, run_id, tags={"echo.stage": "train"}, description=f"v{number}")
        assert str(mv.version) == number
        tags = {f"echo.eval.{key}": str(value) for key, value in metrics.items()}
        tags["echo.eval.against"] = "1"
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_model_version_tag(name, number, EVAL_DIGEST_TAG, evaluation_digest(tags))
    return var


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_promote_rollback_and_history_on_a_real_registry(registry_var: Path) -> None:
    from echo_lib.agent.engine import CompletionEngine
    from echo_lib.core import registry

    cfg = load_config(overrides={"var_dir": str(registry_var)}).config
    name = cfg.mlflow.registered_model

    dry = _json(run_echoctl(registry_var, "promote", "--version", "2", "--json"))  # promotion.enabled is off
    assert dry["verdict"] == "pass" and dry["mode"] == "dry-run" and not dry["promoted"]
    assert dry["champion_after"] == "1"
    mv2 = registry.client(cfg).get_model_version(name, "2")
    assert mv2.tags["echo.gate.verdict"] == "pass"
    # the description leads with the verdict, above what training wrote
    assert mv2.description.startswith(
        "Gate: PASS: all 5 checks passed (dry-run"
    ) and mv2.description.endswith("\n\nv2")
    run2 = registry.client(cfg).get_run(mv2.run_id).data.tags
    assert (
        run2["echo.gate.eval_sha256"] == mv2.tags[EVAL_DIGEST_TAG]
        and run2["echo.gate.checks"].count(";") == 4
    )

    # an evaluation tag edited after the evaluation is detected, not trusted
    gain = run2["echo.eval.acceptance_gain_ci_low"]
    registry.client(cfg).set_tag(mv2.run_id, "echo.eval.acceptance_gain_ci_low", "0.5")
    tampered = _json(run_echoctl(registry_var, "promote", "--version", "2", "--json"))
    assert tampered["verdict"] == "fail" and "re-evaluate" in tampered["reasons"][0]
    registry.client(cfg).set_tag(mv2.run_id, "echo.eval.acceptance_gain_ci_low", gain)

    on = ("--set", "promotion.enabled=true")
    done = _json(run_echoctl(registry_var, *on, "promote", "--version", "2", "--json"))
    assert done["promoted"] and done["champion_before"] == "1" and done["champion_after"] == "2"
    again = _json(run_echoctl(registry_var, *on, "promote", "--version", "2", "--json"))
    assert not again["promoted"] and again["champion_after"] == "2"  # idempotent

    # serving resolves the alias at load time: no code change picks up the promotion
    engine = CompletionEngine.load(
        registry.model_uri(cfg), tracking_uri=cfg.mlflow_tracking_uri, cache_dir=registry_var / "cache" / "m"
    )
    assert engine.model_version == f"models:/{name}/2"

    failed = _json(run_echoctl(registry_var, *on, "promote", "--version", "3", "--json"))
    assert failed["verdict"] == "fail" and not failed["promoted"] and failed["champion_after"] == "2"
    assert any("edit similarity regressed" in r for r in failed["reasons"])
    mv3 = registry.client(cfg).get_model_version(name, "3")
    # only what failed, once, first
    assert mv3.description.startswith(
        "Gate: FAIL: forgetting (reserved public code) edit similarity regressed"
    )
    assert mv3.description.count("Gate:") == 1 and "acceptance gain" not in mv3.description
    assert "<" not in registry.client(cfg).get_registered_model(name).description
    # the UI opens the experiment on its runs, not on an empty GenAI traces page
    experiment = registry.client(cfg).get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    back = _json(run_echoctl(registry_var, "rollback", "--reason", "pager at 3am", "--json"))
    assert back == {**back, "from": "2", "to": "1", "moved": True}
    refused = run_echoctl(registry_var, "rollback", "--to", "3")
    assert refused.returncode == 1 and "v3 failed its gate" in refused.stderr
    missing = run_echoctl(registry_var, "rollback", "--to", "99")
    assert missing.returncode == 1 and "has no version 99" in missing.stderr
    forced = _json(run_echoctl(registry_var, "rollback", "--to", "3", "--force", "--json"))
    assert forced["to"] == "3" and forced["moved"]

    # a fresh process reads the history back from the store
    proc = run_echoctl(registry_var, "history", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(e["action"], e["from"], e["to"]) for e in entries] == [
        ("bootstrap", None, "1"),
        ("promote", "1", "2"),
        ("rollback", "2", "1"),
        ("rollback", "1", "3"),
    ]
    assert entries[2]["why"] == "pager at 3am" and all(e["who"] and e["when"] for e in entries)


@pytest.mark.integration
def test_evaluate_logs_paired_metrics_to_the_challenger(registry_var: Path) -> None:
    """v2 has v1's weights: the paired comparison must find exactly no difference."""
    from echo_lib.core import registry

    shown = ("--set", "engine.show_threshold=0")  # the tiny model is rarely confident; show everything
    report = _json(
        run_echoctl(registry_var, *shown, "evaluate", "--challenger", "2", "--sessions", "4", "--json")
    )
    for gain in report["gains"].values():
        assert gain["value"] == 0.0 and gain["ci_low"] == 0.0 and gain["ci_high"] == 0.0
    assert report["champion"]["offline"] == report["challenger"]["offline"]
    assert report["champion"]["forgetting"]["rows"] > 0
    assert report["champion"]["offline"]["all"]["rows"] == report["champion"]["online"]["shown"] > 0

    cfg = load_config(overrides={"var_dir": str(registry_var)}).config
    client = registry.client(cfg)
    mv = client.get_model_version(cfg.mlflow.registered_model, "2")
    run = client.get_run(mv.run_id)
    details = run.data.tags
    assert float(details["echo.eval.acceptance_gain"]) == 0.0 and details["echo.eval.sessions"] == "4"
    assert float(details["echo.eval.retained_gain"]) == 0.0
    # the version keeps a few decisive, readable tags; the details are on the run
    assert mv.tags["echo.acceptance_gain"] == "+0.00% [+0.00%, +0.00%]"
    assert not [
        k for k in mv.tags if k.startswith("echo.eval.") and k not in ("echo.eval.against", EVAL_DIGEST_TAG)
    ]
    flat = summary_metrics(report)
    assert run.data.metrics["eval.challenger.acceptance_rate"] == pytest.approx(
        flat["challenger.acceptance_rate"]
    )
    artifacts = {f.path for f in client.list_artifacts(mv.run_id, "evaluation")}
    assert artifacts == {"evaluation/metrics.json", "evaluation/report.md", "evaluation/acceptance.png"}
    # no improvement: the gate says no
    verdict = _json(run_echoctl(registry_var, "promote", "--version", "2", "--dry-run", "--json"))
    assert verdict["verdict"] == "fail"


def test_a_failing_registry_is_an_error_not_a_missing_champion(monkeypatch, tmp_path: Path) -> None:
    """Only "no such model/alias" means no champion; a registry that fails (here a tracking
    server answering 500) must raise, or bootstrap would register a second champion."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from mlflow.exceptions import MlflowException

    from echo_lib.core import registry

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"error_code": "INTERNAL_ERROR", "message": "database is locked"}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        failing = load_config(overrides={"mlflow.tracking_uri": f"http://127.0.0.1:{server.server_port}"})
        with pytest.raises(MlflowException, match="500"):
            registry.version_by_alias(failing.config, registry.CHAMPION)
    finally:
        server.shutdown()
    store = load_config(overrides={"mlflow.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}).config
    assert registry.version_by_alias(store, registry.CHAMPION) is None  # no model: not found
    registry.client(store).create_registered_model(store.mlflow.registered_model)
    assert registry.version_by_alias(store, registry.CHAMPION) is None  # no alias: not found


def test_concurrent_history_appends_lose_nothing(tmp_path: Path) -> None:
    """Two writers recording champion changes at once (a manual rollback beside a nightly
    promotion): every entry survives, in the order written."""
    from concurrent.futures import ThreadPoolExecutor

    from echo_lib.core import registry

    cfg = load_config(overrides={"var_dir": str(tmp_path / "var")}).config
    registry.client(cfg).create_registered_model(cfg.mlflow.registered_model)
    registry.record_champion_change(cfg, action="bootstrap", from_version=None, to_version="1", why="v0")

    def writer(name: str) -> None:
        for k in range(4):
            registry.record_champion_change(cfg, action=name, from_version="1", to_version=str(k), why="test")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(writer, ["promote", "rollback"]))
    entries = registry.history(cfg)
    assert len(entries) == 9 and entries[0]["action"] == "bootstrap"
    for name in ("promote", "rollback"):
        assert [e["to"] for e in entries if e["action"] == name] == ["0", "1", "2", "3"]
