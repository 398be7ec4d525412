"""Silver -> gold: planted secrets never reach gold, the funnel reconciles, reruns are identical."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from echo_lib.core.config import DatasetSettings
from echo_lib.mining.dataset import GOLD_SCHEMAS, run_build
from echo_lib.mining.privacy import scrub
from echo_lib.mining.refinements import SILVER_SCHEMA

SECRETS = {
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_" + "x1Y2z3" * 6,
    "stripe": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "slack": "xoxb-123456789012-1234567890123-" + "abcdefghijklmnopqrstuvwx",
    "password": "hunter2-is-my-password",
    "email": "jane.doe@example.com",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA"
    + "Q" * 60
    + "\n-----END RSA PRIVATE KEY-----",
}
LEAKS = [
    ("prefix", 'KEY = "{aws}"\nTOKEN = "{github}"\n'),
    ("proposal", 'stripe.api_key = "{stripe}"'),
    ("final", 'password = "{password}"'),
    ("final", 'slack_token = "{slack}"'),
    ("prefix", "# maintainer: {email}\n{private_key}\n"),
    ("suffix", '\nSECRET = "{github}"\n'),
]
T0 = datetime(2026, 11, 24, 9, tzinfo=UTC)


def row(i: int, **overrides) -> dict:
    base = {
        "session_id": f"s{i % 7}",
        "request_id": f"r{i:04d}",
        "user_id": f"u{i % 3}",
        "repo_id": "acme",
        "doc_id": f"acme/m{i % 5}.py",
        "model_version": "m1",
        "trigger": "line_start",
        "offset": 100 + i,
        "prefix": f"def handler_{i}(event):\n    value_{i} = event.get('k{i}')\n    ",
        "suffix": "\n",
        "proposal": f"return value_{i}",
        "confidence": 0.5,
        "latency_ms": 100,
        "shown_ts": T0 + timedelta(seconds=i),
        "reaction": "rejected",
        "accepted_len": None,
        "reject_reason": "typed_over",
        "reaction_ts": None,
        "time_to_react_ms": None,
        "final": f"return transform_{i}(value_{i}, scale={i})",
        "final_source": "snapshot",
        "outcome": "rejected_rewritten",
        "edit_distance": 10,
        "similarity": 0.5,
        "snapshot_age_s": 600,
        "shown_event_id": f"e{i}",
        "reaction_event_id": None,
        "snapshot_event_id": None,
    }
    return {**base, **overrides}


def write_silver(spark, lake: Path, rows: list[dict]) -> None:
    from echo_lib.core import lake as lake_io

    df = spark.createDataFrame(
        rows,
        schema=SILVER_SCHEMA,
    )
    lake_io.write_partition(spark, df, str(lake), "silver/refinements", "2026-11-24")


def gold_text(spark, lake: Path) -> str:
    parts = []
    for name in ("sft", "preference", "kto"):
        for r in spark.read.parquet(str(lake / "gold" / name / "dt=2026-11-24")).collect():
            parts.extend(str(v) for v in r.asDict().values())
    return "\n".join(parts)


def test_scrub_finds_each_provider() -> None:
    for name, secret in SECRETS.items():
        line = (
            f'db_password = "{secret}"' if name == "password" else f'x = "{secret}"'
        )  # keyword needs a name
        text, found = scrub(line)
        assert found >= 1 and secret not in text, name


@pytest.fixture
def silver(spark, tmp_path: Path) -> Path:
    rows = [row(i) for i in range(40)]
    for k, (field, template) in enumerate(LEAKS):  # plant secrets in prefix, suffix, proposal and final
        rows[k][field] = template.format(**SECRETS) + (rows[k][field] if field == "prefix" else "")
    rows.append(row(40, final="  ", outcome="rejected_nothing_kept"))  # trivial
    rows.append(row(41, user_id="opted-out-user"))  # opted out
    rows.append(row(42, final=None, final_source=None))  # never settled
    rows.append(
        row(43, request_id="dup", prefix=rows[10]["prefix"], final=rows[10]["final"])
    )  # exact duplicate
    rows.append(row(44, final="return self._cache.get(key, default)"))  # a held-out line
    rows.append(
        row(
            45,
            session_id="s-other",
            request_id="near",
            prefix=rows[11]["prefix"] + " ",
            final=rows[11]["final"],
        )
    )  # near duplicate from another session
    write_silver(spark, tmp_path, rows)
    return tmp_path


def test_gold_has_no_secrets_and_the_funnel_reconciles(spark, silver: Path) -> None:
    heldout = [
        "class Cache:\n    def get(self, key, default=None):\n        return self._cache.get(key, default)\n"
    ]
    settings = DatasetSettings(opt_out_users=["opted-out-user"])
    spark.catalog.clearCache()
    m = run_build(spark, str(silver), ["2026-11-24"], heldout, settings=settings)
    # nothing the build cached outlives it: a long-lived session (the flywheel's) builds many times
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()
    for table, expected in GOLD_SCHEMAS.items():
        written = spark.read.parquet(str(silver / "gold" / table / "dt=2026-11-24")).schema
        assert [(f.name, f.dataType) for f in written] == [(f.name, f.dataType) for f in expected], table
    text = gold_text(spark, silver)
    for name, secret in SECRETS.items():
        assert secret not in text, f"{name} secret reached gold"
    assert "<SECRET>" in text and "<EMAIL>" in text
    steps = [s for s in m["funnel"] if "rows_in" in s]
    assert steps[0]["rows_in"] == 46
    for before, after in zip(steps, steps[1:], strict=False):
        assert after["rows_in"] == before["rows_out"]
    dropped = {s["step"]: s["dropped"] for s in steps}
    assert dropped == {
        "settled": 1,
        "non_trivial": 1,
        "denoised": 0,
        "opted_in": 1,
        "capped": 0,
        "scrubbed": 0,
        "exact_deduped": 1,
        "near_deduped": 1,
        "decontaminated": 1,
    }
    assert m["datasets"]["sft"]["rows"] == steps[-1]["rows_out"] == 40
    assert m["datasets"]["preference"]["rows"] == 40  # every kept code differs from its proposal
    assert m["datasets"]["kto"]["rows"] == 80


def test_naive_harvests_skip_echos_steps_but_not_privacy_or_decontamination(spark, silver: Path) -> None:
    from echo_lib.mining.dataset import NAIVE_STEPS

    heldout = ["    return self._cache.get(key, default)\n"]
    raw = run_build(spark, str(silver), ["2026-11-24"], heldout, settings=DatasetSettings(harvest="raw"))
    steps = {s["step"]: s for s in raw["funnel"] if "rows_in" in s}
    assert tuple(steps) == NAIVE_STEPS
    assert steps["decontaminated"]["dropped"] == 1  # evaluation hygiene applies to every arm alike
    # 46 rows less the never-settled one and the held-out line: the trivial, duplicate and
    # near-duplicate rows stay (no denoising, deduplication or caps)
    assert steps["settled"]["dropped"] == 1 and raw["datasets"]["sft"]["rows"] == 44
    text = gold_text(spark, silver)
    assert all(secret not in text for secret in SECRETS.values())


def test_accepted_harvest_keeps_the_proposal_as_shown(spark, tmp_path: Path) -> None:
    rows = [row(i) for i in range(6)]
    for i in (1, 4):
        rows[i].update(outcome="accepted_unchanged", reaction="accepted", final=rows[i]["proposal"] + " ")
    write_silver(spark, tmp_path, rows)
    m = run_build(spark, str(tmp_path), ["2026-11-24"], [], settings=DatasetSettings(harvest="accepted"))
    sft = spark.read.parquet(str(tmp_path / "gold" / "sft" / "dt=2026-11-24")).collect()
    assert m["datasets"]["sft"]["rows"] == 2
    assert sorted(r["completion"] for r in sft) == ["return value_1", "return value_4"]


def test_caps_limit_one_developer(spark, silver: Path) -> None:
    settings = DatasetSettings(cap_per_user=5, opt_out_users=["opted-out-user"])
    m = run_build(spark, str(silver), ["2026-11-24"], [], settings=settings)
    capped = next(s for s in m["funnel"] if s["step"] == "capped")
    assert capped["rows_out"] == 3 * 5  # three developers (u0, u1, u2), five rows each


def test_empty_window_fails_clearly(spark, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="echoctl mine"):
        run_build(spark, str(tmp_path), ["2026-01-01"], [])


def test_near_dedupe_drops_the_later_copy_from_another_session_only(spark) -> None:
    from echo_lib.mining.dataset import near_dedupe

    body = "def load(path):\n    with open(path) as f:\n        data = json.load(f)\n    "
    rows = [
        row(0, session_id="s1", request_id="a", prefix=body, final="return data"),
        row(1, session_id="s1", request_id="b", prefix=body + " ", final="return data"),  # same session
        row(2, session_id="s3", request_id="c", prefix="class Other:\n    ", final="x = compute()"),
        row(3, session_id="s2", request_id="d", prefix=body, final="return data "),  # another session
        row(4, session_id="s4", request_id="e", prefix="", final="ok"),  # too short for a 5-gram
    ]
    df = spark.createDataFrame(
        [{k: r[k] for k in ("session_id", "request_id", "prefix", "final", "shown_ts")} for r in rows]
    )
    kept = sorted(r["request_id"] for r in near_dedupe(df, threshold=0.2).collect())
    assert kept == ["a", "b", "c", "e"]


def test_kto_labels_agree_with_what_the_acceptance_metric_counts(spark) -> None:
    from echo_lib.mining.dataset import to_kto

    outcomes = {
        "a": ("accepted_unchanged", "x = 1"),
        "b": ("accepted_then_edited", "x = 2"),
        "c": ("partially_accepted", "x"),
        "d": ("rejected_rewritten", "y = 3"),
    }
    df = spark.createDataFrame(
        [(rid, "p", proposal, "x = 1", outcome, "train") for rid, (outcome, proposal) in outcomes.items()],
        "request_id string, prefix string, proposal string, final string, outcome string, split string",
    )
    rows = {(r["request_id"], r["completion"]): r["label"] for r in to_kto(df).collect()}
    # the proposal: desirable wherever the metric counts an accept (edited or partial included)
    assert {rid: rows[(rid, outcomes[rid][1])] for rid in outcomes} == {
        "a": True,
        "b": True,
        "c": True,
        "d": False,
    }
    # the kept code, wherever it differs from what was shown: desirable
    assert rows[("b", "x = 1")] and rows[("d", "x = 1")] and len(rows) == 7


def test_a_build_that_dies_before_its_manifest_leaves_the_date_unreadable_until_rebuilt(
    spark, silver: Path, monkeypatch
) -> None:
    from echo_lib.mining import dataset
    from echo_lib.training.refine import TrainError, read_gold

    lake = str(silver)
    run_build(spark, lake, ["2026-11-24"], [])
    before = read_gold(lake, "sft", ["2026-11-24"])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(dataset, "write_gold_manifest", crash)
    with pytest.raises(KeyboardInterrupt):  # new tables written, the old manifest still in place
        run_build(spark, lake, ["2026-11-24"], [], settings=DatasetSettings(cap_per_user=5))
    with pytest.raises(
        TrainError, match="did not finish; rebuild it: echoctl build-dataset --date 2026-11-24"
    ):
        read_gold(lake, "sft", ["2026-11-24"])
    monkeypatch.undo()
    run_build(spark, lake, ["2026-11-24"], [])
    assert read_gold(lake, "sft", ["2026-11-24"]).equals(before)
