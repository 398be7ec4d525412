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

The results are logged to the challenger's MLflow run (metrics, ``echo.eval.*`` tags the gate
reads, ``evaluation/report.md``, a plot, ``evaluation/metrics.json``); its model version gets only
the decisive ones (against which champion, the acceptance gain with its CI, the tags' digest).
"""

from __future__ import annotations

import functools
import json
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from echo_lib.core.config import EchoConfig
from echo_lib.core.stats import signed

EVAL_ARTIFACT_DIR = "evaluation"


# ---- metrics ----------------------------------------------------------------------------------


@functools.cache
def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF(char_order=6, word_order=0, beta=2, whitespace=True)


def chrf(hypothesis: str, reference: str) -> float:
    """Character 6-gram F-score with beta 2 (chrF, Popović 2015; sacrebleu's) in [0, 1].
    Whitespace is kept: it is code."""
    if hypothesis == reference:
        return 1.0
    return _chrf_metric().sentence_score(hypothesis, [reference]).score / 100


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


GAINS = {  # reported gain -> (numerator, denominator) per session
    "acceptance": ("accepted", "shown"),  # the paper's number: acceptance among shown
    "retained": ("retained_chars", "requests"),  # what users got: accepted characters still standing
    "shown_rate": ("shown", "requests"),  # how often a proposal appears at all
}


def paired_gains(base: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Challenger minus champion on each ratio of :data:`GAINS`, with paired session-bootstrap CIs."""
    from echo_lib.core.stats import bootstrap_ratio

    if [s["session_id"] for s in base] != [s["session_id"] for s in new] or not base:
        raise ValueError("a paired comparison needs the same, non-empty list of sessions for both models")
    out = {}
    for name, (num, den) in GAINS.items():
        out[name] = bootstrap_ratio(
            [s[num] for s in new],
            [s[den] for s in new],
            base_num=[s[num] for s in base],
            base_den=[s[den] for s in base],
        )
    return out


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
    from echo_lib.world import corpus

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
    from echo_lib.core import registry
    from echo_lib.world.behaviour import BehaviourParams
    from echo_lib.world.runner import load_engine

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
    per_session: dict[str, list[dict[str, Any]]] = {}
    for role, mv in (("champion", champion_mv), ("challenger", challenger_mv)):
        engine = load_engine(cfg, f"models:/{name}/{mv.version}")
        online = online_run(cfg, mv, engine, sessions=sessions, seed=seed, label=role, progress=progress)
        refinements = online.pop("refinements")
        if role == "champion":
            rows = _sample(refinements, cfg.promotion.offline_max_rows)
        per_session[role] = online.pop("per_session")
        progress(f"{role} v{mv.version}: offline on {len(rows)} held-out refinements, forgetting check ...")
        report[role] = {
            "online": online,
            "offline": offline_metrics(engine, rows, params),
            "forgetting": forgetting_metrics(engine, samples),
        }
    report["gains"] = paired_gains(per_session["champion"], per_session["challenger"])
    report["seconds"] = time.perf_counter() - began
    _log_evaluation(cfg, challenger_mv, report)
    return report


def online_run(
    cfg: EchoConfig,
    mv,
    engine,
    *,
    sessions: int,
    seed: int,
    split: str = "heldout",
    label: str = "",
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A registered version's world run on ``sessions`` sessions of ``split``: measured once, then
    read from the cache (the world is deterministic given the model, sessions, seed and settings).
    Carries ``per_session`` counts and the shown proposals as ``refinements``."""
    from echo_lib.world.runner import ProgressLines, measure_acceptance

    who = f"{label} v{mv.version}".strip()
    cache = _online_cache(cfg, mv, sessions, seed, engine, split)
    if cache.is_file():
        progress(f"{who}: {split} world sessions measured before, reusing {cache.name}")
        return json.loads(cache.read_text())
    progress(f"{who}: {sessions} {split} world sessions (seed {seed}) ...")
    online = measure_acceptance(
        cfg,
        engine=engine,
        split=split,
        sessions=sessions,
        seed=seed,
        log_to_mlflow=False,
        keep_results=True,
        on_plan=(lines := ProgressLines(progress, who)).plan,
        progress=lines,
    )
    online["refinements"] = heldout_refinements(online.pop("results"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(online))
    return online


def _online_cache(cfg: EchoConfig, mv, sessions: int, seed: int, engine, split: str = "heldout") -> Path:
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
            split,
        ],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    where = "" if split == "heldout" else f"{split}-"
    return cfg.var_path / "cache" / "acceptance" / f"v{mv.version}-{where}{sessions}x{seed}-{digest}.json"


def _sample(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` rows, a fixed sample (stable across runs and models)."""
    if len(rows) <= limit:
        return rows
    import hashlib

    return sorted(rows, key=lambda r: hashlib.sha256(r["request_id"].encode()).hexdigest())[:limit]


def resolve_version(cfg: EchoConfig, version_or_alias: str):
    """A model version by number or alias; :class:`EvaluationError` if there is none."""
    from mlflow.exceptions import MlflowException

    from echo_lib.core import registry

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
        out[f"{role}.retained_per_request"] = r["online"]["retained_per_request"]
        out[f"{role}.retained_ci_low"] = r["online"]["retained_ci_low"]
        out[f"{role}.retained_ci_high"] = r["online"]["retained_ci_high"]
        out[f"{role}.shown_rate"] = r["online"]["shown"] / max(r["online"]["requests"], 1)
        for k, v in r["offline"].get("all", {}).items():
            out[f"{role}.offline.{k}"] = v
        for k, v in r["forgetting"].items():
            out[f"{role}.forgetting.{k}"] = v
    for name, gain in report["gains"].items():
        out[f"{name}_gain"] = gain["value"]
        out[f"{name}_gain_ci_low"] = gain["ci_low"]
        out[f"{name}_gain_ci_high"] = gain["ci_high"]
        out[f"{name}_gain_relative"] = gain["relative"]
    return out


def _log_evaluation(cfg: EchoConfig, mv, report: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    from echo_lib.core import registry

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
    # the details go on the evaluation's run; the version keeps what a reader decides on
    tags = {f"echo.eval.{k}": f"{v:.6f}" for k, v in flat.items()}
    tags["echo.eval.against"] = report["champion_version"]
    tags["echo.eval.sessions"] = str(report["sessions"])
    tags["echo.eval.seed"] = str(report["seed"])
    digest = evaluation_digest(tags)
    stale = set(evaluation_tags(cfg, mv)) - set(tags) - {EVAL_DIGEST_TAG}
    for key in stale:  # an earlier evaluation's keys this one lacks would break the digest
        client.delete_tag(mv.run_id, key)
    for key, value in tags.items():
        client.set_tag(mv.run_id, key, value)
    client.set_tag(mv.run_id, EVAL_DIGEST_TAG, digest)
    gain = report["gains"]["acceptance"]
    decisive = {
        "echo.eval.against": report["champion_version"],
        "echo.acceptance_gain": (
            f"{signed(gain['value'], '.2%')} [{signed(gain['ci_low'], '.2%')}, {signed(gain['ci_high'], '.2%')}]"
        ),
        EVAL_DIGEST_TAG: digest,
    }
    for key, value in decisive.items():
        client.set_model_version_tag(name, str(mv.version), key, value)


def evaluation_tags(cfg: EchoConfig, mv) -> dict[str, str]:
    """The ``echo.eval.*`` tags ``echo evaluate`` wrote on the version's run (empty if never
    evaluated)."""
    from echo_lib.core import registry

    if not mv.run_id:
        return {}
    tags = registry.client(cfg).get_run(mv.run_id).data.tags
    return {k: v for k, v in tags.items() if k.startswith(EVAL_TAG_PREFIX)}


EVAL_TAG_PREFIX = "echo.eval."
EVAL_DIGEST_TAG = "echo.eval.sha256"


def evaluation_digest(tags: dict[str, str]) -> str:
    """SHA-256 of a version's evaluation tags (all ``echo.eval.*`` but the digest itself): the
    gate recomputes it, so a tag edited after ``echoctl evaluate`` wrote it is detected."""
    import hashlib

    signed = {k: v for k, v in tags.items() if k.startswith(EVAL_TAG_PREFIX) and k != EVAL_DIGEST_TAG}
    return hashlib.sha256(json.dumps(signed, sort_keys=True).encode()).hexdigest()


def render_report(report: dict[str, Any]) -> str:
    c, n, gains = report["champion"], report["challenger"], report["gains"]
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
        f"| retained characters per request | {c['online']['retained_per_request']:.3f} "
        f"[{c['online']['retained_ci_low']:.3f}, {c['online']['retained_ci_high']:.3f}] | "
        f"{n['online']['retained_per_request']:.3f} [{n['online']['retained_ci_low']:.3f}, "
        f"{n['online']['retained_ci_high']:.3f}] |",
        f"| requests / shown / accepted / retained chars | {c['online']['requests']} / {c['online']['shown']} / "
        f"{c['online']['accepted']} / {c['online']['accepted_retained_chars']} | {n['online']['requests']} / "
        f"{n['online']['shown']} / {n['online']['accepted']} / {n['online']['accepted_retained_chars']} |",
    ]
    for key in ("exact_match", "edit_similarity", "chrf", "acceptance_proxy"):
        lines.append(
            f"| offline {key} | {c['offline'].get('all', {}).get(key, 0):.3f} | {n['offline'].get('all', {}).get(key, 0):.3f} |"
        )
    for key in ("exact_match", "edit_similarity"):
        lines.append(f"| forgetting {key} | {c['forgetting'][key]:.3f} | {n['forgetting'][key]:.3f} |")
    a, r, v = gains["acceptance"], gains["retained"], gains["shown_rate"]
    lines += [
        "",
        f"Challenger - champion, paired bootstrap 95% CI over the same {a['sessions']} sessions:",
        "",
        f"- acceptance among shown: {a['value']:+.2%} [{a['ci_low']:+.2%}, {a['ci_high']:+.2%}] "
        f"({a['relative']:+.1%} relative)",
        f"- retained characters per request: {r['value']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
        f"({r['relative']:+.1%} relative)",
        f"- shown rate: {v['value']:+.2%} [{v['ci_low']:+.2%}, {v['ci_high']:+.2%}]",
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

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [f"champion v{report['champion_version']}", f"challenger v{report['challenger_version']}"]
    for ax, (key, low, high, title) in zip(
        axes,
        (
            ("acceptance_rate", "ci_low", "ci_high", "acceptance among shown"),
            ("retained_per_request", "retained_ci_low", "retained_ci_high", "retained chars per request"),
        ),
        strict=True,
    ):
        for i, role in enumerate(("champion", "challenger")):
            o = report[role]["online"]
            value = o[key]
            ax.errorbar([i], [value], yerr=[[value - o[low]], [o[high] - value]], fmt="o", capsize=6)
        ax.set_xticks([0, 1], labels)
        ax.set_title(f"held-out {title} (95% CI)", fontsize=9)
        ax.set_xlim(-0.5, 1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- several versions side by side -----------------------------------------------------------


def validation_loss(engine, records: list[dict[str, Any]]) -> float | None:
    """Mean loss per target token on gold's validation rows (SFT rows built as training builds
    them: the engine's prompt, then the kept code). None without rows."""
    import torch

    from echo_lib.training.refine import sft_ids

    total = count = 0.0
    with torch.inference_mode():
        for record in records:
            step = engine.settings.prompt_window_step
            row = sft_ids(
                engine.tokenizer,
                record["prompt"],
                record["completion"],
                engine.context_length or 1 << 30,
                window_step=step,
                prompt_tokens=engine._max_prompt_tokens() if step > 1 else 0,
            )
            if row is None:
                continue
            ids = torch.tensor([row["input_ids"]])
            labels = ids.clone()
            labels[0, torch.tensor(row["completion_mask"]) == 0] = -100
            n = int((labels != -100).sum())  # every target token is predicted (the prompt comes first)
            out = engine.model(input_ids=ids, labels=labels)
            total += float(out.loss) * n
            count += n
    return total / count if count else None


def compare(
    cfg: EchoConfig,
    versions: Sequence[str],
    *,
    base: str,
    sessions: int | None = None,
    seed: int | None = None,
    split: str = "heldout",
    forgetting: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every version in ``versions`` against ``base`` on the same world sessions of ``split``: what
    users saw and got (acceptance among shown, retained characters per request, shown rate), each
    gain with a paired session-bootstrap CI, and (optionally) the forgetting check."""
    from echo_lib.world.runner import load_engine

    name = cfg.mlflow.registered_model
    sessions = sessions or cfg.world.acceptance_sessions
    seed = cfg.world.acceptance_seed if seed is None else seed
    samples = forgetting_samples(cfg, cfg.promotion.forgetting_samples) if forgetting else []
    validation = _validation_records(cfg)
    rows: list[dict[str, Any]] = []
    base_sessions: list[dict[str, Any]] = []
    for number in [base, *[v for v in versions if str(v) != str(base)]]:
        mv = resolve_version(cfg, number)
        engine = load_engine(cfg, f"models:/{name}/{mv.version}")
        online = online_run(cfg, mv, engine, sessions=sessions, seed=seed, split=split, progress=progress)
        online.pop("refinements", None)
        per_session = online.pop("per_session")
        row = {
            "version": str(mv.version),
            "description": (mv.description or "").split(";")[0][:120],
            "show_policy": mv.tags.get(
                "echo.show_policy", f"confidence, threshold {cfg.engine.show_threshold:.3f}"
            ),
            "online": online,
        }
        if not base_sessions:
            base_sessions = per_session
        else:
            row["gains"] = paired_gains(base_sessions, per_session)
        if samples:
            progress(f"v{mv.version}: forgetting check on {len(samples)} lines of reserved public code ...")
            row["forgetting"] = forgetting_metrics(engine, samples)
        if validation:
            row["validation_loss"] = validation_loss(engine, validation)
        rows.append(row)
    return {"base": str(rows[0]["version"]), "split": split, "sessions": sessions, "seed": seed, "rows": rows}


def _validation_records(cfg: EchoConfig, limit: int = 300) -> list[dict[str, Any]]:
    """Gold's validation rows (sessions never trained on) of every gold date, a fixed sample."""
    from echo_lib.core.lake import gold_dates
    from echo_lib.training.refine import read_gold

    dates = gold_dates(cfg.lake_uri)
    if not dates:
        return []
    frame = read_gold(cfg.lake_uri, "sft", dates, split="validation")
    return _sample(frame.to_dict("records"), limit)


def render_comparison(result: dict[str, Any]) -> str:
    """A markdown table of :func:`compare` (the numbers docs/results.md quotes)."""
    base = result["base"]
    lines = [
        f"{result['sessions']} {result['split']} world sessions, seed {result['seed']}, the same sessions for "
        f"every model; gains are paired against v{base} (session bootstrap, 95% CI).",
        "",
        "| version | what | show policy | requests | shown | accepted | acceptance among shown | "
        f"gain vs v{base} | retained chars / request | gain vs v{base} (relative) | shown rate | "
        "forgetting: similarity | gold validation loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        o, g = row["online"], row.get("gains")
        acc_gain = ret_gain = "-"
        if g:
            a, r = g["acceptance"], g["retained"]
            acc_gain = f"{a['value']:+.2%} [{a['ci_low']:+.2%}, {a['ci_high']:+.2%}]"
            ret_gain = f"{r['value']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] ({r['relative']:+.1%})"
        forgetting = f"{row['forgetting']['edit_similarity']:.3f}" if row.get("forgetting") else "-"
        loss = f"{row['validation_loss']:.3f}" if row.get("validation_loss") is not None else "-"
        lines.append(
            f"| v{row['version']} | {row['description']} | {row['show_policy']} | {o['requests']:,} | "
            f"{o['shown']:,} | {o['accepted']:,} | {o['acceptance_rate']:.2%} [{o['ci_low']:.2%}, "
            f"{o['ci_high']:.2%}] | {acc_gain} | {o['retained_per_request']:.3f} | {ret_gain} | "
            f"{o['shown'] / max(o['requests'], 1):.1%} | {forgetting} | {loss} |"
        )
    return "\n".join(lines) + "\n"
