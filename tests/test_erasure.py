"""`echoctl forget`: a user's data leaves every table of the lake, the rest stays, the manifests
still vouch for gold, a rerun changes nothing, and later builds leave the user out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from echo_lib.mining.dataset import GOLD_SCHEMAS, content_hash, run_build
from echo_lib.mining.erasure import forgotten, run_forget
from echo_lib.mining.ingest import run_ingest
from echo_lib.mining.refinements import run_mine
from tests.test_ingest import write_raw
from tests.test_mining import world_day

DAY = "2026-11-24"


def rows(spark, lake: Path, table: str) -> list[dict]:
    found = sorted((lake / table).glob("dt=*"))
    return [r.asDict() for p in found for r in spark.read.parquet(str(p)).collect()]


def raw_lines(lake: Path) -> list[bytes]:
    return [
        line
        for f in sorted((lake / "raw").rglob("*.jsonl.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]


def test_forget_a_user_everywhere(spark, tmp_path: Path) -> None:
    from echo_lib.core.lake import vouched_gold_partition

    lake = tmp_path
    world_day(lake, seed=5)
    user = json.loads(raw_lines(lake)[0])["user_id"]
    # a bad line that names the user goes to quarantine: it must go too
    write_raw(lake, DAY, "part-bad.jsonl.gz", [f'{{"user_id": "{user}", "broken'.encode()])
    for raw in sorted((lake / "raw" / "events").glob("dt=*")):  # the day, and its late events if any
        run_ingest(spark, str(lake), raw.name.removeprefix("dt="))
    run_mine(spark, str(lake), DAY)
    run_build(spark, str(lake), [DAY], [])
    silver = rows(spark, lake, "silver/refinements")
    theirs = {r["request_id"] for r in silver if r["user_id"] == user}
    sessions = {r["session_id"] for r in silver if r["user_id"] == user}
    others = {r["request_id"] for r in silver if r["user_id"] != user}
    assert theirs and others
    gold_before = {t: rows(spark, lake, f"gold/{t}") for t in GOLD_SCHEMAS}
    assert any(r["request_id"] in theirs for r in gold_before["sft"])

    result = run_forget(spark, str(lake), [user], [], who="test")

    assert result["gold_dates"] == [DAY] and result["removed_rows"]["raw/events"] > 0
    assert all(r["user_id"] != user for r in rows(spark, lake, "bronze/events"))
    assert {r["request_id"] for r in rows(spark, lake, "silver/refinements")} == others
    assert not sessions & {r["session_id"] for r in rows(spark, lake, "quarantine/orphans")}
    assert not [r for r in rows(spark, lake, "quarantine/events") if user in (r["raw"] or "")]
    assert not [line for line in raw_lines(lake) if user.encode() in line]
    manifest = json.loads((lake / "gold" / "_manifests" / f"dt={DAY}" / "_manifest.json").read_text())
    for table in GOLD_SCHEMAS:
        after = rows(spark, lake, f"gold/{table}")
        assert not {r["request_id"] for r in after} & theirs
        assert after == [r for r in gold_before[table] if r["request_id"] not in theirs]
        sha256, count = content_hash(spark.read.parquet(str(lake / "gold" / table / f"dt={DAY}")))
        assert manifest["datasets"][table] == {**manifest["datasets"][table], "rows": count, "sha256": sha256}
        assert vouched_gold_partition(str(lake), table, DAY)  # training can read what is left
    assert manifest["erasures"][0]["users"] == [user]

    # a rerun finds nothing left; a later build leaves the user out by the recorded request
    again = run_forget(spark, str(lake), [user], [], who="test")
    assert again["gold_dates"] == [] and not any(again["removed_rows"].values())
    assert forgotten(str(lake)) == ([user], [])
    rebuilt = run_build(spark, str(lake), [DAY], [])
    assert user in rebuilt["settings"]["opt_out_users"]
