"""Ingest never dies on data: every line any step cannot handle is quarantined with a reason.

Property-based (hypothesis): arbitrary bytes, arbitrary JSON values in every field of every event
type, and pathological structures go through the line checker and the Arrow conversion; each one
comes out either as a valid bronze row or as a quarantined row with a contract reason, never an
exception, and the counts reconcile exactly.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import zlib

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_lib.core.events import ARROW_SCHEMA, REASONS, validate_event
from echo_lib.mining.ingest import Limits, _decode_batches, check_line, gzip_lines
from tests.test_ingest import examples

EXAMPLES = examples()
FIELDS = sorted({name for e in EXAMPLES for name in e})
# text as JSON can carry it: any code point, unpaired surrogates included (escaped as \udXXX)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: far beyond int64
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


def decode(lines: list[bytes], limits: Limits = Limits()) -> pa.Table:
    """What ingest's mapInArrow does to one raw file holding ``lines`` (no Spark needed)."""
    content = gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)
    files = pa.record_batch({"path": ["raw/part-0.jsonl.gz"], "content": [content]})
    batches = list(_decode_batches(iter([files]), limits))
    return pa.Table.from_batches(batches) if batches else pa.table({})


def assert_each_line_valid_or_quarantined(table: pa.Table, lines: int) -> None:
    rows = table.to_pylist()
    assert len(rows) == lines  # input = accepted + quarantined, line by line
    for row in rows:
        if row["_reason"] is None:
            record = {k: v for k, v in row.items() if v is not None and k in ARROW_SCHEMA.names}
            record["ts"] = record["ts"].isoformat(timespec="milliseconds").replace("+00:00", "Z")
            assert validate_event(record) is None
        else:
            assert row["_reason"] in REASONS and row["_detail"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_quarantined_or_valid_never_raised(raw: bytes) -> None:
    record, invalid = check_line(raw)
    assert (record is None) != (invalid is None)
    if invalid:
        assert invalid.reason in REASONS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    example=st.sampled_from(EXAMPLES),
    field=st.sampled_from(FIELDS),
    value=JSON_VALUES,
    ascii_only=st.booleans(),
)
def test_any_json_value_in_any_field_is_quarantined_or_stored(example, field, value, ascii_only) -> None:
    record = {**copy.deepcopy(example), field: value}
    line = json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    table = decode([line, json.dumps(example).encode()])
    assert_each_line_valid_or_quarantined(table, 2)
    assert table.column("_reason")[1].as_py() is None  # a bad neighbour costs the good line nothing


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b and b.strip()), max_size=8))
def test_a_file_of_arbitrary_lines_reconciles(lines: list[bytes]) -> None:
    assert_each_line_valid_or_quarantined(decode(lines), len(lines))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_a_gzip_file_never_raise(data: bytes) -> None:
    for _, raw, problem in gzip_lines(data, Limits(max_line_bytes=64, max_file_bytes=1 << 16)):
        assert problem is None or problem.reason in REASONS
        assert len(raw) <= 65  # a line is never buffered past its budget


SHOWN = next(e for e in EXAMPLES if e["event_type"] == "completion_shown")


def with_raw(field: str, literal: str) -> bytes:
    """The shown example with ``field`` set to a raw JSON literal no encoder would write."""
    return json.dumps({**SHOWN, field: "@@"}).replace('"@@"', literal).encode()


PATHOLOGICAL = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting in a field": with_raw("prefix", "[" * 50_000 + "]" * 50_000),
    "integer of 5,000 digits": with_raw("seq", "9" * 5000),
    "integer beyond int64": json.dumps({**SHOWN, "seq": 2**64}).encode(),
    "float field beyond int64": json.dumps({**SHOWN, "latency_ms": -(2**70)}).encode(),
    "NaN confidence": json.dumps({**SHOWN, "confidence": math.nan}).encode(),
    "Infinity confidence": with_raw("confidence", "1e999"),
    "unpaired surrogate in text": json.dumps({**SHOWN, "proposal": "ok\ud800"}).encode(),
    "unpaired surrogate in a key": json.dumps({**SHOWN, "\udfff": 1}).encode(),
    "unpaired surrogate in event_type": json.dumps({**SHOWN, "event_type": "\ud83d"}).encode(),
    "NUL bytes in text": json.dumps({**SHOWN, "proposal": "a\x00b"}).encode(),
    "year 0 timestamp": json.dumps({**SHOWN, "ts": "0000-01-01T00:00:00Z"}).encode(),
    "duplicate keys": b'{"event_type": "session_start", "event_type": [1]}',
    "a million keys": json.dumps({str(i): i for i in range(100_000)}).encode(),
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_lines_are_quarantined_with_a_reason(name: str) -> None:
    line = PATHOLOGICAL[name]
    record, invalid = check_line(line)
    table = decode([line])
    assert_each_line_valid_or_quarantined(table, 1)
    if name == "NUL bytes in text":  # valid: a NUL is a character like any other
        assert record is not None and table.column("_reason")[0].as_py() is None
    else:
        assert invalid is not None and table.column("_reason")[0].as_py() == invalid.reason


def test_a_gzip_bomb_is_cut_at_the_file_budget_in_bounded_memory() -> None:
    # 64 MiB of lines compress to about 290 KiB; the budget stops reading at 1 MiB
    line = json.dumps(SHOWN).encode() + b"\n"
    bomb = zlib.compressobj(wbits=31)
    data = b"".join(bomb.compress(line * 4096) for _ in range(64 * (1 << 20) // (4096 * len(line))))
    data += bomb.flush()
    assert len(data) < 1 << 20
    rows = list(gzip_lines(data, Limits(max_file_bytes=1 << 20)))
    *lines, last = rows
    assert all(p is None for _, _, p in lines) and len(lines) <= (1 << 20) // len(line)
    assert last[2].reason == "oversize_file" and "raise ingest.max_file_bytes" in last[2].detail


def test_an_oversize_line_keeps_its_head_and_never_buffers_the_rest() -> None:
    huge = b"x" * (5 << 20)
    rows = list(gzip_lines(gzip.compress(b"ok\n" + huge + b"\nafter\n"), Limits(max_line_bytes=1 << 20)))
    assert [(n, p.reason if p else None) for n, _, p in rows] == [
        (1, None),
        (2, "oversize_field"),
        (3, None),
    ]
    assert rows[1][1] == huge[:64_000] and str(5 << 20) in rows[1][2].detail
    assert rows[2][1] == b"after"


def test_hostile_partition_ingests_and_reconciles(spark, tmp_path) -> None:
    """The whole Spark job on a partition of hostile lines: it finishes and every line is counted."""
    from echo_lib.mining.ingest import run_ingest
    from tests.test_ingest import write_raw

    good = [json.dumps(e).encode() for e in EXAMPLES]
    hostile = [line for name, line in sorted(PATHOLOGICAL.items()) if name != "a million keys"]
    write_raw(tmp_path, "2026-11-24", "part-00000.jsonl.gz", good + hostile)
    m = run_ingest(spark, str(tmp_path), "2026-11-24")
    assert m["lines_read"] == len(good) + len(hostile) == m["valid"] + m["quarantined"]
    assert m["valid"] == len(good) + 1  # the NUL-byte event is valid (a redelivery of SHOWN's id)
    assert m["written"] == len(good) and m["duplicates_removed"] == 1
    assert m["quarantined"] == len(hostile) - 1
