"""``echoctl evaluate``: judge a challenger against the champion, offline and in the world.

* **Online** (the number everything answers to): both models serve the *same* held-out world
  sessions with the same seed (``world.acceptance_seed``); the gain in acceptance gets a paired
  bootstrap 95% CI over sessions.
* **Offline** on held-out refinements: every proposal the champion showed in those sessions, with
  the code the developer actually kept (ground truth of the world, which the miner recovers for
  100% of shown proposals, docs/mining.md). Both models propose at the same prompts; exact match,
  edit similarity (1 - normalised Levenshtein), chrF and an acceptance proxy (the world's own
  accept rules without their randomness), overall and per outcome class of the champion's
  traffic. Held-out code is never trained on: build-dataset decontaminates gold against it.
* **Forgetting**: next-line exact match on the *reserved* slice of public code, which no model
  ever trains on (corpus split ``reserved``).

The results are logged to the challenger's MLflow run (metrics, ``evaluation/report.md``, a plot,
``evaluation/metrics.json``) and summarised as tags on its model version, where the gate reads
them.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from echo_lib.config import EchoConfig

EVAL_ARTIFACT_DIR = "evaluation"


# ---- metrics ----------------------------------------------------------------------------------


def chrf(hypothesis: str, reference: str, *, max_n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (chrF, Popović 2015) in [0, 1]; whitespace is kept (it is code)."""
    if hypothesis == reference:
        return 1.0
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        hyp = Counter(hypothesis[i : i + n] for i in range(len(hypothesis) - n + 1))
        ref = Counter(reference[i : i + n] for i in range(len(reference) - n + 1))
        if not hyp or not ref:
            continue
        overlap = sum((hyp & ref).values())
        precisions.append(overlap / sum(hyp.values()))
        recalls.append(overlap / sum(ref.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)


def would_accept(proposal: str, kept: str, shown: bool, params) -> bool:
    """The world's accept rules (exact, close, or a correct start of a word) minus their dice."""
    from echo_lib.world.behaviour import similarity, word_prefix_len

    if not shown or not proposal.strip():
        return False
    return (
        proposal == kept
        or similarity(proposal, kept) >= params.close_similarity
        or word_prefix_len(proposal, kept) >= params.min_partial_chars
    )


def paired_bootstrap(
    base: Sequence[tuple[float, float]],
    new: Sequence[tuple[float, float]],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Gain in a ratio metric (accepted / shown) between two models measured on the same sessions.

    ``base[i]`` and ``new[i]`` are (numerator, denominator) of session ``i``; sessions are resampled
    jointly, so the CI is of the paired difference.
    """
    import numpy as np

    if len(base) != len(new) or not base:
        raise ValueError("paired bootstrap needs the same, non-empty list of sessions for both models")
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)

    def rate(x, axis=0):
        num, den = x[..., 0].sum(axis=axis), x[..., 1].sum(axis=axis)
        return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)

    observed = float(rate(n) - rate(b))
    picks = np.random.default_rng(seed).integers(0, len(b), size=(resamples, len(b)))
    diffs = rate(n[picks], axis=1) - rate(b[picks], axis=1)
    low, high = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
    return {"gain": observed, "ci_low": low, "ci_high": high, "sessions": len(b), "resamples": resamples}


# ---- data --------------------------------------------------------------------------------------


def heldout_refinements(results) -> list[dict[str, Any]]:
    """(prompt, champion's proposal, kept code, outcome) for every proposal shown in the sessions."""
    rows = []
    for result in results:
        prompts = {
            e["request_id"]: (e["prefix"], e.get("suffix") or "")
            for e in result.events
            if e["event_type"] == "completion_shown"
        }
        for record in result.shown:
            prefix, suffix = prompts[record.request_id]
            rows.append(
                {
                    "request_id": record.request_id,
                    "prefix": prefix,
                    "suffix": suffix,
                    "proposal": record.proposal,
                    "final": record.final,
                    "outcome": record.reaction,
                }
            )
    return rows


def forgetting_samples(cfg: EchoConfig, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prefix, next line) at line starts of reserved public code, never trained on."""
    from echo_lib import corpus

    files = sorted(corpus.scan(corpus.public_repos(cfg), cfg).select("reserved"), key=lambda f: f.doc_id)
    if not files:
        return []
    rng = random.Random(seed)
    samples: list[tuple[str, str]] = []
    attempts = 0
    while len(samples) < count and attempts < count * 20:
        attempts += 1
        text = rng.choice(files).text
        lines = text.splitlines(keepends=True)
        if len(lines) < 3:
            continue
        i = rng.randrange(1, len(lines))
        line = lines[i].rstrip("\n")
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        start = sum(len(x) for x in lines[:i]) + indent  # at the first non-blank character, like the world
        samples.append((text[max(0, start - 4000) : start], line[indent:]))
    return samples


def offline_metrics(engine, rows: list[dict[str, Any]], params) -> dict[str, Any]:
    """Propose at every held-out prompt; score against the kept code, overall and per outcome."""
    from echo_lib.world.behaviour import similarity

    proposals = engine.complete([r["prefix"] for r in rows], [r["suffix"] for r in rows]) if rows else []
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    if not rows:
        return {
            "all": {
                "rows": 0,
                "exact_match": 0.0,
                "edit_similarity": 0.0,
                "chrf": 0.0,
                "acceptance_proxy": 0.0,
            }
        }
    for row, p in zip(rows, proposals, strict=True):
        scores = {
            "exact_match": float(p.text == row["final"]),
            "edit_similarity": similarity(p.text, row["final"]),
            "chrf": chrf(p.text, row["final"]),
            "acceptance_proxy": float(would_accept(p.text, row["final"], p.shown, params)),
        }
        groups["all"].append(scores)
        groups[row["outcome"]].append(scores)
    return {
        name: {"rows": len(items), **{k: sum(s[k] for s in items) / len(items) for k in items[0]}}
        for name, items in groups.items()
    }


def forgetting_metrics(engine, samples: list[tuple[str, str]]) -> dict[str, float]:
    from echo_lib.world.behaviour import similarity

    if not samples:
        return {"rows": 0, "exact_match": 0.0, "edit_similarity": 0.0}
    proposals = engine.complete([s[0] for s in samples])
    exact = sum(p.text == real for p, (_, real) in zip(proposals, samples, strict=True))
    sim = sum(similarity(p.text, real) for p, (_, real) in zip(proposals, samples, strict=True))
    return {"rows": len(samples), "exact_match": exact / len(samples), "edit_similarity": sim / len(samples)}


# ---- the command -----------------------------------------------------------------------------


class EvaluationError(RuntimeError):
    """Evaluation cannot run (no champion, no challenger, unknown version)."""


def evaluate(
    cfg: EchoConfig,
    *,
    challenger: str | None = None,
    against: str | None = None,
    sessions: int | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    from echo_lib import registry
    from echo_lib.world.behaviour import BehaviourParams
    from echo_lib.world.runner import load_engine, measure_acceptance

    began = time.perf_counter()
    champion_mv = (
        resolve_version(cfg, against) if against else registry.version_by_alias(cfg, registry.CHAMPION)
    )
    if champion_mv is None:
        raise EvaluationError("no @champion: run `echoctl bootstrap` first")
    challenger_mv = resolve_version(cfg, challenger or registry.CHALLENGER)
    if str(challenger_mv.version) == str(champion_mv.version):
        raise EvaluationError(f"v{challenger_mv.version} is the champion already; nothing to compare")
    name = cfg.mlflow.registered_model
    params = BehaviourParams()
    sessions = sessions or cfg.world.acceptance_sessions
    seed = cfg.world.acceptance_seed
    report: dict[str, Any] = {
        "champion_version": str(champion_mv.version),
        "challenger_version": str(challenger_mv.version),
        "sessions": sessions,
        "seed": seed,
    }
    samples = forgetting_samples(cfg, cfg.promotion.forgetting_samples)
    rows: list[dict[str, Any]] = []
    per_session: dict[str, list[tuple[float, float]]] = {}
    for role, mv in (("champion", champion_mv), ("challenger", challenger_mv)):
        engine = load_engine(cfg, f"models:/{name}/{mv.version}")
        cache = _online_cache(cfg, mv, sessions, seed, engine)
        if cache.is_file():
            progress(f"{role} v{mv.version}: held-out world sessions measured before, reusing {cache.name}")
            online = json.loads(cache.read_text())
        else:
            progress(f"{role} v{mv.version}: {sessions} held-out world sessions (seed {seed}) ...")
            online = measure_acceptance(
                cfg, engine=engine, sessions=sessions, seed=seed, log_to_mlflow=False, keep_results=True
            )
            online["refinements"] = heldout_refinements(online.pop("results"))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(online))
        refinements = online.pop("refinements")
        if role == "champion":
            rows = _sample(refinements, cfg.promotion.offline_max_rows)
        per_session[role] = [(s["accepted"], s["shown"]) for s in online.pop("per_session")]
        progress(f"{role} v{mv.version}: offline on {len(rows)} held-out refinements, forgetting check ...")
        report[role] = {
            "online": online,
            "offline": offline_metrics(engine, rows, params),
            "forgetting": forgetting_metrics(engine, samples),
        }
    report["acceptance_gain"] = paired_bootstrap(per_session["champion"], per_session["challenger"])
    report["seconds"] = time.perf_counter() - began
    _log_evaluation(cfg, challenger_mv, report)
    return report


def _online_cache(cfg: EchoConfig, mv, sessions: int, seed: int, engine) -> Path:
    """Where a model's held-out world run is kept: the world is deterministic given the model's
    files, the sessions, the seed, the behaviour and the engine settings, so it is measured once."""
    import dataclasses
    import hashlib

    from echo_lib.world.behaviour import BehaviourParams

    identity = json.dumps(
        [
            mv.run_id,
            mv.source,
            str(mv.version),
            sessions,
            seed,
            dataclasses.asdict(BehaviourParams()),
            dataclasses.asdict(engine.settings),
            cfg.corpus.model_dump(),
        ],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cfg.var_path / "cache" / "acceptance" / f"v{mv.version}-{sessions}x{seed}-{digest}.json"


def _sample(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` rows, a fixed sample (stable across runs and models)."""
    if len(rows) <= limit:
        return rows
    import hashlib

    return sorted(rows, key=lambda r: hashlib.sha256(r["request_id"].encode()).hexdigest())[:limit]


def resolve_version(cfg: EchoConfig, version_or_alias: str):
    """A model version by number or alias; :class:`EvaluationError` if there is none."""
    from mlflow.exceptions import MlflowException

    from echo_lib import registry

    client, name = registry.client(cfg), cfg.mlflow.registered_model
    try:
        if str(version_or_alias).isdigit():
            return client.get_model_version(name, str(version_or_alias))
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as exc:
        raise EvaluationError(
            f"registered model {name!r} has no version or alias {version_or_alias!r}"
        ) from exc


def summary_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The flat numbers the gate and the MLflow run use."""
    out: dict[str, float] = {}
    for role in ("champion", "challenger"):
        r = report[role]
        out[f"{role}.acceptance_rate"] = r["online"]["acceptance_rate"]
        out[f"{role}.acceptance_ci_low"] = r["online"]["ci_low"]
        out[f"{role}.acceptance_ci_high"] = r["online"]["ci_high"]
        for k, v in r["offline"].get("all", {}).items():
            out[f"{role}.offline.{k}"] = v
        for k, v in r["forgetting"].items():
            out[f"{role}.forgetting.{k}"] = v
    gain = report["acceptance_gain"]
    out.update(
        {
            "acceptance_gain": gain["gain"],
            "acceptance_gain_ci_low": gain["ci_low"],
            "acceptance_gain_ci_high": gain["ci_high"],
        }
    )
    return out


def _log_evaluation(cfg: EchoConfig, mv, report: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    from echo_lib import registry

    client, name = registry.client(cfg), cfg.mlflow.registered_model
    flat = summary_metrics(report)
    stamp = int(time.time() * 1000)
    client.log_batch(mv.run_id, metrics=[Metric(f"eval.{k}", float(v), stamp, 0) for k, v in flat.items()])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / EVAL_ARTIFACT_DIR
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
        (folder / "report.md").write_text(render_report(report))
        _plot(report, folder / "acceptance.png")
        client.log_artifacts(mv.run_id, str(folder), EVAL_ARTIFACT_DIR)
    tags = {f"echo.eval.{k}": f"{v:.6f}" for k, v in flat.items()}
    tags["echo.eval.against"] = report["champion_version"]
    tags["echo.eval.sessions"] = str(report["sessions"])
    tags["echo.eval.seed"] = str(report["seed"])
    for key, value in tags.items():
        client.set_model_version_tag(name, str(mv.version), key, value)


def render_report(report: dict[str, Any]) -> str:
    c, n, gain = report["champion"], report["challenger"], report["acceptance_gain"]
    lines = [
        f"# Evaluation: v{report['challenger_version']} (challenger) vs v{report['champion_version']} (champion)",
        "",
        f"Held-out world: {report['sessions']} sessions, seed {report['seed']}, both models on the same sessions.",
        "",
        "| metric | champion | challenger |",
        "| --- | --- | --- |",
        f"| held-out acceptance | {c['online']['acceptance_rate']:.2%} [{c['online']['ci_low']:.2%}, "
        f"{c['online']['ci_high']:.2%}] | {n['online']['acceptance_rate']:.2%} [{n['online']['ci_low']:.2%}, "
        f"{n['online']['ci_high']:.2%}] |",
        f"| shown / accepted | {c['online']['shown']} / {c['online']['accepted']} | "
        f"{n['online']['shown']} / {n['online']['accepted']} |",
    ]
    for key in ("exact_match", "edit_similarity", "chrf", "acceptance_proxy"):
        lines.append(
            f"| offline {key} | {c['offline'].get('all', {}).get(key, 0):.3f} | {n['offline'].get('all', {}).get(key, 0):.3f} |"
        )
    for key in ("exact_match", "edit_similarity"):
        lines.append(f"| forgetting {key} | {c['forgetting'][key]:.3f} | {n['forgetting'][key]:.3f} |")
    lines += [
        "",
        f"Acceptance gain (challenger - champion): {gain['gain']:+.2%}, paired bootstrap 95% CI "
        f"[{gain['ci_low']:+.2%}, {gain['ci_high']:+.2%}] over {gain['sessions']} sessions.",
        "",
        "## Offline, per outcome class of the champion's traffic",
        "",
        "| outcome | rows | champion exact | challenger exact | champion similarity | challenger similarity |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for outcome in sorted(k for k in c["offline"] if k != "all"):
        a, b = c["offline"][outcome], n["offline"].get(outcome, {})
        lines.append(
            f"| {outcome} | {a['rows']} | {a['exact_match']:.3f} | {b.get('exact_match', 0):.3f} | "
            f"{a['edit_similarity']:.3f} | {b.get('edit_similarity', 0):.3f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, role in enumerate(("champion", "challenger")):
        o = report[role]["online"]
        rate = o["acceptance_rate"]
        ax.errorbar([i], [rate], yerr=[[rate - o["ci_low"]], [o["ci_high"] - rate]], fmt="o", capsize=6)
    ax.set_xticks(
        [0, 1], [f"champion v{report['champion_version']}", f"challenger v{report['challenger_version']}"]
    )
    ax.set_ylabel("held-out acceptance (95% CI)")
    ax.set_xlim(-0.5, 1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
