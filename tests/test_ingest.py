"""Raw -> bronze: every bad line quarantined with its reason, counts reconcile, reruns identical."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest

from echo_lib.core.events import validate_event
from echo_lib.mining.ingest import check_line, gzip_lines, run_ingest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def examples() -> list[dict]:
    import re

    return [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", DOCS.read_text(), flags=re.S)]


def test_gzip_lines_reads_members_and_survives_truncation() -> None:
    data = gzip.compress(b"a\nb\n") + gzip.compress(b"c")
    assert list(gzip_lines(data)) == [(1, b"a", None), (2, b"b", None), (3, b"c", None)]
    long = gzip.compress(b"".join(b"line %d\n" % i for i in range(5000)))
    lines = list(gzip_lines(long[: len(long) // 2]))
    assert lines[-1][2].reason == "truncated_gzip"
    assert all(problem is None for _, _, problem in lines[:-1]) and len(lines) > 100
    assert [raw for _, raw, _ in lines[:3]] == [b"line 0", b"line 1", b"line 2"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b'{"event_type": "session_start", "x": "\xff\xfe"}', "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b"x" * (1 << 20 + 1), "oversize_field"),
    ],
)
def test_check_line_reasons(raw: bytes, reason: str) -> None:
    record, invalid = check_line(raw)
    assert record is None and invalid.reason == reason


def write_raw(lake: Path, dt: str, name: str, lines: list[bytes], *, truncate: int = 0) -> Path:
    folder = lake / "raw" / "events" / f"dt={dt}"
    folder.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)
    path = folder / name
    path.write_bytes(data[: len(data) - truncate] if truncate else data)
    return path


def bad_lines() -> dict[str, bytes]:
    shown = copy.deepcopy(next(e for e in examples() if e["event_type"] == "completion_shown"))
    missing = {k: v for k, v in shown.items() if k != "proposal"}
    unknown = {**shown, "event_type": "completion_clicked"}
    wrong = {**shown, "seq": "7"}
    oversize = {**shown, "prefix": "x" * 20_000}
    return {
        "malformed_json": b'{"event_id": "x", ',
        "invalid_utf8": json.dumps(shown).encode().replace(b"return", b"ret\xffurn"),
        "missing_field": json.dumps(missing).encode(),
        "unknown_event_type": json.dumps(unknown).encode(),
        "wrong_type": json.dumps(wrong).encode(),
        "oversize_field": json.dumps(oversize).encode(),
    }


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    events = examples()
    good = [json.dumps(e).encode() for e in events]
    bad = bad_lines()
    # file 1: all valid events, a duplicate delivery, every kind of bad line, a blank line
    write_raw(
        tmp_path, "2026-11-24", "part-00000.jsonl.gz", good[:6] + [good[2]] + list(bad.values()) + [b""]
    )
    # file 2: the rest, cut inside the gzip member (a crashed upload)
    tail = [
        json.dumps({**e, "event_id": f"{e['event_id']}-b{i}"}).encode()
        for i in range(300)
        for e in events[6:]
    ]
    write_raw(tmp_path, "2026-11-24", "part-00001.jsonl.gz", good[6:] + tail, truncate=40)
    return tmp_path


def test_ingest_quarantines_reconciles_and_dedupes(spark, lake: Path) -> None:
    m = run_ingest(spark, str(lake), "2026-11-24")
    assert m["lines_read"] == m["valid"] + m["quarantined"]
    assert m["valid"] == m["written"] + m["duplicates_removed"]
    assert m["duplicates_removed"] == 1
    expected_reasons = {reason: 1 for reason in bad_lines()} | {"truncated_gzip": 1}
    assert m["quarantined_by_reason"] == expected_reasons

    bronze = spark.read.parquet(str(lake / "bronze" / "events" / "dt=2026-11-24"))
    assert bronze.count() == m["written"]
    assert bronze.select("event_id").distinct().count() == m["written"]
    rows = {r["event_id"]: r.asDict() for r in bronze.collect()}
    for event in examples():
        row = rows[event["event_id"]]
        assert {k: row[k] for k in event if k != "ts"} == {k: v for k, v in event.items() if k != "ts"}

    quarantine = spark.read.parquet(str(lake / "quarantine" / "events" / "dt=2026-11-24"))
    q = {r["reason"]: r for r in quarantine.collect()}
    assert set(q) == set(expected_reasons)
    assert q["malformed_json"]["raw"] == '{"event_id": "x", '
    assert q["malformed_json"]["line_no"] == 8 and q["malformed_json"]["source_file"].endswith(
        "part-00000.jsonl.gz"
    )
    assert "proposal" in q["missing_field"]["detail"]
    assert "\ufffd" in q["invalid_utf8"]["raw"]  # as much as is readable
    assert q["truncated_gzip"]["source_file"].endswith("part-00001.jsonl.gz")
    manifest = json.loads((lake / "bronze" / "events" / "dt=2026-11-24" / "_manifest.json").read_text())
    assert manifest == json.loads(json.dumps(m))


def test_quarantine_keeps_no_secret_of_a_bad_line(spark, tmp_path: Path) -> None:
    key, address = "AKIAIOSFODNN7EXAMPLE", "jane.doe@corp.example.com"
    shown = next(e for e in examples() if e["event_type"] == "completion_shown")
    broken = json.dumps({**shown, "prefix": f"aws_key = '{key}'  # {address}"}).encode()[:-3]
    write_raw(tmp_path, "2026-11-25", "part-00000.jsonl.gz", [broken])
    m = run_ingest(spark, str(tmp_path), "2026-11-25")
    assert m["quarantined_by_reason"] == {"malformed_json": 1}
    [row] = spark.read.parquet(str(tmp_path / "quarantine" / "events" / "dt=2026-11-25")).collect()
    assert key not in row["raw"] and address not in row["raw"]
    assert "<SECRET>" in row["raw"] and "<EMAIL>" in row["raw"] and row["raw"].startswith('{"event_id"')


def test_rerun_is_idempotent(spark, lake: Path) -> None:
    first = run_ingest(spark, str(lake), "2026-11-24")
    rows = sorted(map(tuple, spark.read.parquet(str(lake / "bronze/events/dt=2026-11-24")).collect()))
    second = run_ingest(spark, str(lake), "2026-11-24")
    again = sorted(map(tuple, spark.read.parquet(str(lake / "bronze/events/dt=2026-11-24")).collect()))
    assert first == second and rows == again


def test_crash_mid_write_keeps_the_previous_partition(spark, lake: Path) -> None:
    from pyspark.sql import functions as F

    from echo_lib.core import lake as lake_io

    run_ingest(spark, str(lake), "2026-11-24")
    before = sorted(map(tuple, spark.read.parquet(str(lake / "bronze/events/dt=2026-11-24")).collect()))

    # a task that dies while the new partition is being written
    broken = spark.read.parquet(str(lake / "bronze/events/dt=2026-11-24")).withColumn(
        "session_id", F.coalesce(F.raise_error(F.lit("executor lost")).cast("string"), F.col("session_id"))
    )
    with pytest.raises(Exception, match="executor lost"):
        lake_io.write_partition(spark, broken, str(lake), "bronze/events", "2026-11-24")
    after = sorted(map(tuple, spark.read.parquet(str(lake / "bronze/events/dt=2026-11-24")).collect()))
    assert after == before  # the previous complete partition is untouched
    assert list((lake / "bronze" / "events" / "_staging").iterdir())  # debris of the crashed write
    # the next run cleans the debris and gives the same result as a clean run
    run_ingest(spark, str(lake), "2026-11-24")
    assert not list((lake / "bronze" / "events" / "_staging").iterdir())
    assert (
        sorted(map(tuple, spark.read.parquet(str(lake / "bronze/events/dt=2026-11-24")).collect())) == before
    )


def test_examples_are_valid() -> None:
    assert all(validate_event(e) is None for e in examples())


@pytest.mark.integration
def test_echoctl_ingest_runs_the_job_with_spark_submit(lake: Path, tmp_path: Path) -> None:
    from tests.conftest import run_echoctl

    proc = run_echoctl(
        tmp_path / "var",
        "--set",
        f"lake.uri={lake}",
        "--set",
        "spark.master=local[2]",
        "--set",
        "ingest.max_line_bytes=100",  # a flag reaches the job: every line is over this budget
        "ingest",
        "--date",
        "2026-11-24",
        "--json",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads(proc.stdout.strip().splitlines()[-1])
    assert manifest["lines_read"] == manifest["valid"] + manifest["quarantined"]
    assert manifest["valid"] == 0 and manifest["quarantined_by_reason"]["oversize_field"] > 0
    # the job's row counts reach the user while it runs (stderr), not only its log
    assert f"ingest 2026-11-24: {manifest['lines_read']:,} lines read = " in proc.stderr
    assert (lake / "bronze" / "events" / "dt=2026-11-24" / "_SUCCESS").is_file()
    assert (tmp_path / "var" / "logs" / "spark" / "ingest-2026-11-24.log").is_file()


def test_stage_progress_names_running_stages_and_their_tasks(spark) -> None:
    import re
    import time

    from echo_lib.core.spark import stage_progress

    lines: list[str] = []
    with stage_progress(spark, lines.append, every_s=0.05):
        spark.sparkContext.parallelize(range(8), 4).map(lambda x: (time.sleep(0.25), x)[1]).count()
    assert lines and all(re.fullmatch(r"spark stage \d+ \(.+\): [0-4]/4 tasks", line) for line in lines), (
        lines
    )
