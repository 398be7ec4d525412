"""Bronze -> silver refinements: on hand-written sequences and on world data with known truth."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from echo_lib.core.config import load_config
from echo_lib.mining.ingest import run_ingest
from echo_lib.mining.refinements import SILVER_SCHEMA, mine, run_mine
from echo_lib.world import corpus
from echo_lib.world.behaviour import BehaviourParams
from echo_lib.world.delivery import DeliveryParams, write_day
from echo_lib.world.simulate import plan_day, run_sessions
from tests.scripted import Oracle

T0 = datetime(2026, 11, 24, 9, tzinfo=UTC)


def event(
    seq: int,
    event_type: str,
    *,
    session: str = "s1",
    skew: float = 0.0,
    event_id: str | None = None,
    **fields,
):
    return {
        "event_id": event_id or f"{session}-{seq}",
        "schema_version": 1,
        "event_type": event_type,
        "ts": T0 + timedelta(seconds=seq + skew),
        "seq": seq,
        "session_id": session,
        "user_id": "u1",
        "repo_id": "r",
        "doc_id": "r/m.py",
        "language": "python",
        "client": "test",
        "dt": "2026-11-24",
        "_source_file": "f",
        "_line_no": seq,
        **fields,
    }


def shown(seq: int, request: str, proposal: str, offset: int = 4, **kw):
    return event(
        seq,
        "completion_shown",
        request_id=request,
        model_version="m1",
        offset=offset,
        prefix="x = ",
        suffix="\ny = 2\n",
        proposal=proposal,
        confidence=0.5,
        latency_ms=100,
        trigger="mid_line",
        **kw,
    )


def snapshot(seq: int, request: str, text: str, age: int = 600, offset: int = 4, **kw):
    return event(seq, "region_snapshot", request_id=request, age_s=age, offset=offset, text=text, **kw)


def frame(spark, rows: list[dict]):
    from pyspark.sql.types import StructType

    from echo_lib.mining.ingest import lines_schema

    base: StructType = lines_schema()
    fields = [f for f in base.fields if not f.name.startswith("_")]
    from pyspark.sql.types import LongType, StringType, StructField

    schema = StructType(
        fields
        + [
            StructField("_source_file", StringType()),
            StructField("_line_no", LongType()),
            StructField("dt", StringType()),
        ]
    )
    return spark.createDataFrame([{f.name: r.get(f.name) for f in schema.fields} for r in rows], schema)


def test_every_outcome_class_from_hand_written_sequences(spark) -> None:
    rows = [
        event(0, "session_start", doc_len=10),
        # accepted unchanged (the 5 s snapshot caught a typo in progress; the settled one did not)
        shown(1, "a", "1"),
        event(2, "completion_accepted", request_id="a", accepted_len=1),
        snapshot(3, "a", "1x", age=5),
        snapshot(4, "a", "1", age=600),
        # accepted then edited
        shown(5, "b", "foo(1)"),
        event(6, "completion_accepted", request_id="b", accepted_len=6),
        snapshot(7, "b", "foo(2)", age=30),
        # partially accepted
        shown(8, "c", "bar(x)"),
        event(9, "completion_accepted", request_id="c", accepted_len=4),
        snapshot(10, "c", "bar(y)"),
        # rejected and rewritten; the reaction arrives out of order with a skewed clock
        shown(12, "d", "None"),
        event(11, "completion_rejected", request_id="d", reason="typed_over", skew=-50),
        snapshot(13, "d", "compute()"),
        # rejected with nothing kept
        shown(14, "e", "pass"),
        event(15, "completion_rejected", request_id="e", reason="dismissed"),
        snapshot(16, "e", ""),
        # abandoned: no reaction at all
        shown(17, "f", "baz"),
        snapshot(18, "f", "qux"),
        # orphans: a reaction and a snapshot for a request that was never shown
        event(19, "completion_accepted", request_id="ghost", accepted_len=3),
        snapshot(20, "ghost", "x"),
    ]
    silver, orphans = mine(frame(spark, rows))
    assert [(f.name, f.dataType) for f in silver.schema] == [(f.name, f.dataType) for f in SILVER_SCHEMA]
    got = silver.select("request_id", "outcome", "final", "final_source", "edit_distance").orderBy(
        "request_id"
    )
    expected = spark.createDataFrame(
        [
            ("a", "accepted_unchanged", "1", "snapshot", 0),
            ("b", "accepted_then_edited", "foo(2)", "snapshot", 1),
            ("c", "partially_accepted", "bar(y)", "snapshot", 1),
            ("d", "rejected_rewritten", "compute()", "snapshot", 7),
            ("e", "rejected_nothing_kept", "", "snapshot", 4),
            ("f", "abandoned", "qux", "snapshot", 3),
        ],
        "request_id string, outcome string, final string, final_source string, edit_distance int",
    )
    assertDataFrameEqual(got, expected)
    assertDataFrameEqual(
        orphans.select("request_id", "reason"),
        spark.createDataFrame(
            [("ghost", "reaction_without_shown"), ("ghost", "snapshot_without_shown")],
            "request_id string, reason string",
        ),
    )


def test_region_is_replayed_from_edits_when_no_settled_snapshot(spark) -> None:
    # doc: "x = |\ny = 2\n"; the user types "4", a typo "2" + backspace, then "2", and edits above
    rows = [
        event(0, "session_start", doc_len=10),
        shown(1, "a", "42"),
        event(2, "completion_rejected", request_id="a", reason="typed_over"),
        event(3, "doc_change", offset=4, removed_len=0, inserted="4", cause="typing"),
        event(4, "doc_change", offset=5, removed_len=0, inserted="7", cause="typing"),
        event(5, "doc_change", offset=5, removed_len=1, inserted="", cause="delete"),
        event(6, "doc_change", offset=5, removed_len=0, inserted="2", cause="typing"),
        event(7, "doc_change", offset=0, removed_len=0, inserted="# header\n", cause="paste"),
        snapshot(8, "a", "4", age=5),  # too young to count as settled
    ]
    silver, _ = mine(frame(spark, rows))
    [row] = silver.collect()
    assert (row["final"], row["final_source"], row["outcome"]) == ("42", "replay", "rejected_rewritten")


def test_a_session_without_edits_or_snapshots_keeps_its_reactions_but_no_final(spark) -> None:
    """Clients that log only shown and accepted (Continue, Tabby) say nothing about the code kept:
    the reaction is a label, the final is unknown, and nothing is replayed from an empty edit log."""
    rows = [
        shown(1, "a", "total = sum(items)"),
        event(2, "completion_accepted", request_id="a", accepted_len=18),
        shown(3, "b", "return None"),
        event(4, "completion_rejected", request_id="b", reason="dismissed"),
        shown(5, "c", "for line in lines:"),
        event(6, "completion_accepted", request_id="c", accepted_len=9),  # a partial (line) accept
        shown(7, "d", "pass"),  # shown, never acted on
    ]
    silver, _ = mine(frame(spark, rows))
    got = {r["request_id"]: (r["outcome"], r["final"], r["final_source"]) for r in silver.collect()}
    assert got == {
        "a": ("accepted_unsettled", None, None),
        "b": ("rejected_unsettled", None, None),
        "c": ("partially_accepted", None, None),
        "d": ("abandoned", None, None),
    }


def test_as_arrived_keeps_the_first_snapshot_a_naive_harvester_would(spark) -> None:
    """The naive-raw baseline's text is the first snapshot (mid-edit); Echo's is the settled one."""
    rows = [
        event(0, "session_start", doc_len=10),
        shown(1, "a", "42"),
        event(2, "completion_rejected", request_id="a", reason="typed_over"),
        snapshot(3, "a", "4", age=5),
        snapshot(4, "a", "43", age=30),
        snapshot(5, "a", "47", age=120),
    ]
    [settled] = mine(frame(spark, rows))[0].collect()
    [raw] = mine(frame(spark, rows), as_arrived=True)[0].collect()
    assert (settled["final"], settled["snapshot_age_s"]) == ("47", 120)
    assert (raw["final"], raw["snapshot_age_s"]) == ("4", 5)


# --------------------------------------------------------------------------- world data, known truth


def world_day(
    lake: Path, seed: int, *, drop_snapshots: bool = False, calibration_percent: int = 0, sessions: int = 40
):
    # calibration_percent=0: the experience files this test was verified on before the calibration split
    cfg = load_config(overrides={"corpus.calibration_percent": calibration_percent}).config
    files = [f for f in corpus.scan(corpus.team_repos(cfg), cfg).select("experience") if len(f.text) < 40_000]
    specs = plan_day(files, date(2026, 11, 24), sessions, seed, BehaviourParams(), DeliveryParams())
    results = run_sessions(specs, Oracle([s.text for s in specs], seed), BehaviourParams(), concurrency=16)
    sessions = [
        [e for e in r.events if not (drop_snapshots and e["event_type"] == "region_snapshot")]
        for r in results
    ]
    write_day(
        lake, date(2026, 11, 24), sessions, DeliveryParams(duplicate_rate=0.01, late_session_rate=0.05), seed
    )
    return {s.request_id: s for r in results for s in r.shown}


OUTCOME_OF_REACTION = {
    "accept_exact": {"accepted_unchanged"},
    "accept_close": {"accepted_then_edited"},
    "accept_partial": {"partially_accepted"},
    "reject": {"rejected_rewritten", "rejected_nothing_kept"},
    "abandon": {"abandoned"},
}


@pytest.mark.parametrize(
    ("drop_snapshots", "calibration_percent"),
    [
        (False, 0),
        (True, 0),
        (False, 10),
        (True, 10),  # has an exact accept at document offset 0 (empty prefix): once mis-replayed
    ],
    ids=["snapshots", "replay-only", "snapshots-new-split", "replay-only-new-split"],
)
def test_mined_final_matches_the_real_code(
    spark, tmp_path: Path, drop_snapshots: bool, calibration_percent: int
) -> None:
    truth = world_day(
        tmp_path, seed=4, drop_snapshots=drop_snapshots, calibration_percent=calibration_percent
    )
    for dt in ("2026-11-24", "2026-11-25"):
        run_ingest(spark, str(tmp_path), dt)
    manifest = run_mine(spark, str(tmp_path), "2026-11-24")
    rows = {
        r["request_id"]: r
        for r in spark.read.parquet(str(tmp_path / "silver/refinements/dt=2026-11-24")).collect()
    }
    assert set(rows) == set(truth), "one row per shown proposal, late and duplicated events included"
    matches = sum(rows[k]["final"] == t.final for k, t in truth.items())
    print(f"mined final == real code for {matches}/{len(truth)} shown proposals ({matches / len(truth):.2%})")
    assert matches / len(truth) >= 0.99, f"{matches}/{len(truth)} finals match"
    for key, t in truth.items():
        assert rows[key]["outcome"] in OUTCOME_OF_REACTION[t.reaction], (t, rows[key]["outcome"])
    assert manifest["refinements"] == len(truth)
    assert manifest["final_source"] == (
        {"replay": len(truth)} if drop_snapshots else {"snapshot": len(truth)}
    )
    # rerun: identical rows
    before = sorted(
        map(tuple, spark.read.parquet(str(tmp_path / "silver/refinements/dt=2026-11-24")).collect())
    )
    run_mine(spark, str(tmp_path), "2026-11-24")
    after = sorted(
        map(tuple, spark.read.parquet(str(tmp_path / "silver/refinements/dt=2026-11-24")).collect())
    )
    assert before == after


def test_mining_without_bronze_fails_clearly(spark, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="echoctl ingest --date 2026-01-01"):
        run_mine(spark, str(tmp_path), "2026-01-01")


def test_noise_in_the_edit_stream_replays_to_the_settled_code(spark) -> None:
    # typo loop, undo/redo, a trial-and-error rewrite, duplicated and out-of-order deliveries
    rows = [
        event(0, "session_start", doc_len=10),
        shown(1, "a", "compute()"),
        event(2, "completion_rejected", request_id="a", reason="typed_over"),
        event(3, "doc_change", offset=4, removed_len=0, inserted="tmp", cause="typing"),  # attempt
        event(4, "doc_change", offset=4, removed_len=3, inserted="", cause="delete"),  # ...abandoned
        event(5, "doc_change", offset=4, removed_len=0, inserted="fx", cause="typing"),  # typo 'x'
        event(6, "doc_change", offset=5, removed_len=1, inserted="", cause="delete"),
        event(7, "doc_change", offset=5, removed_len=0, inserted="(1)", cause="typing"),
        event(8, "doc_change", offset=4, removed_len=4, inserted="", cause="undo"),
        event(9, "doc_change", offset=4, removed_len=0, inserted="f(1)", cause="redo"),
    ]
    delivered = rows + [dict(rows[5], _line_no=99)]  # a redelivered copy (same event_id)
    delivered.reverse()  # arrival order is not seq order
    from echo_lib.mining.refinements import scope_sessions

    events = scope_sessions(frame(spark, delivered), "2026-11-24")
    silver, _ = mine(events)
    [row] = silver.collect()
    assert (row["final"], row["final_source"]) == ("f(1)", "replay")


def test_lookback_rule_assigns_each_session_to_its_first_day(spark) -> None:
    from echo_lib.mining.refinements import scope_sessions

    def on(dt: str, row: dict) -> dict:
        return {**row, "dt": dt}

    rows = [
        # s1 starts on the 24th; its tail arrives late, in the 25th's partition
        on("2026-11-24", event(0, "session_start", session="s1", doc_len=0)),
        on("2026-11-25", event(1, "session_end", session="s1", doc_len=0)),
        # s0 belongs to the 23rd (first seen then), even though an event arrived on the 24th
        on("2026-11-23", event(0, "session_start", session="s0", doc_len=0)),
        on("2026-11-24", event(1, "session_end", session="s0", doc_len=0)),
        # s2 first arrives on the 25th: it is the 25th's session
        on("2026-11-25", event(0, "session_start", session="s2", doc_len=0)),
        # a duplicate of s1's start delivered again the next day is still one event
        on("2026-11-25", event(0, "session_start", session="s1", doc_len=0)),
    ]
    scoped = scope_sessions(frame(spark, rows), "2026-11-24")
    assert sorted((r["session_id"], r["seq"]) for r in scoped.collect()) == [("s1", 0), ("s1", 1)]


def test_replay_keeps_an_accept_at_the_top_of_a_file() -> None:
    """A proposal at document offset 0 has an empty prefix: the accepted text inserted there is
    the region, not an edit before the window (this was mined as accepted_then_edited)."""
    import pandas as pd

    from echo_lib.mining.refinements import replay_regions

    def change(seq: int, offset: int, inserted: str, removed: int = 0) -> dict:
        return {
            "event_type": "doc_change",
            "seq": seq,
            "offset": offset,
            "removed_len": removed,
            "inserted": inserted,
        }

    shown = {"event_type": "completion_shown", "seq": 1, "offset": 0, "prefix": "", "suffix": "import os\n"}
    session = pd.DataFrame(
        [
            {**shown, "request_id": "r1", "needs_replay": True},
            change(2, 0, "# events.py"),  # the accept
            change(3, 11, "\n"),
            {
                **shown,
                "seq": 4,
                "offset": 12,
                "prefix": "# events.py\n",
                "request_id": "r2",
                "needs_replay": True,
            },
            change(5, 12, "x = 1"),
            change(6, 0, "#!/usr/bin/env python\n"),  # typed above a region that does not start the window
        ]
    ).assign(session_id="s")
    finals = replay_regions(session).set_index("request_id")["replayed_final"].to_dict()
    assert finals == {"r1": "# events.py", "r2": "x = 1import os"}
