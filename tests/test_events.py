from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from echo_lib.core import events

DOCS = Path(__file__).resolve().parent.parent / "docs"


def doc_examples() -> list[dict]:
    text = (DOCS / "events.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, flags=re.S)]


def test_docs_have_a_valid_example_of_every_event_type() -> None:
    examples = doc_examples()
    assert {e["event_type"] for e in examples} == set(events.EVENT_TYPES)
    for example in examples:
        assert events.validate_event(example) is None, example


def test_exported_json_schema_is_in_sync_and_accepts_examples() -> None:
    exported = json.loads((DOCS / "schemas" / "events.v1.json").read_text())
    assert exported == events.json_schema(), (
        "regenerate: python -m echo_lib.core.events > docs/schemas/events.v1.json"
    )
    Draft202012Validator.check_schema(exported)
    validator = Draft202012Validator(exported)
    for example in doc_examples():
        assert list(validator.iter_errors(example)) == []


def test_arrow_round_trip_preserves_every_example(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    examples = doc_examples()
    table = events.to_arrow(examples)
    assert table.schema.equals(events.ARROW_SCHEMA)
    pq.write_table(table, tmp_path / "events.parquet")
    back = pq.read_table(tmp_path / "events.parquet")
    assert back.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert events.from_arrow(back) == examples


def test_arrow_and_json_schema_cover_the_same_fields() -> None:
    json_fields = set()
    for definition in events.json_schema()["$defs"].values():
        json_fields |= set(definition["properties"])
    assert json_fields == set(events.ARROW_SCHEMA.names)


def _shown() -> dict:
    return copy.deepcopy(next(e for e in doc_examples() if e["event_type"] == "completion_shown"))


def _mutate(**changes) -> dict:
    record = _shown()
    for key, value in changes.items():
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(
    ("record", "reason", "mentions"),
    [
        ([1, 2], "not_an_object", "JSON object"),
        (_mutate(event_type=KeyError), "missing_field", "event_type"),
        (_mutate(event_type="completion_clicked"), "unknown_event_type", "completion_clicked"),
        (_mutate(proposal=KeyError), "missing_field", "proposal"),
        (_mutate(seq="7"), "wrong_type", "seq"),
        (_mutate(confidence=True), "wrong_type", "confidence"),
        (_mutate(offset=-1), "invalid_value", "offset"),
        (_mutate(confidence=1.5), "invalid_value", "confidence"),
        (_mutate(trigger="sometimes"), "invalid_value", "trigger"),
        (_mutate(ts="2026-11-24 09:30:00"), "invalid_value", "ts"),
        (_mutate(ts="2026-13-40T09:30:00Z"), "invalid_value", "ts"),
        (_mutate(prefix="x" * (events.TEXT_MAX + 1)), "oversize_field", "prefix"),
        (_mutate(colour="blue"), "unknown_field", "colour"),
        (_mutate(schema_version=2), "unsupported_schema_version", "2"),
        (_mutate(latency_ms=None), "wrong_type", "latency_ms"),
        (_mutate(accepted_len=3), "unknown_field", "accepted_len"),
    ],
)
def test_bad_records_get_a_reason_code_and_a_readable_detail(record, reason: str, mentions: str) -> None:
    invalid = events.validate_event(record)
    assert invalid is not None
    assert invalid.reason == reason
    assert invalid.reason in events.REASONS
    assert mentions in invalid.detail
    # the exported JSON Schema, derived from the same specs, rejects it too (it cannot see that
    # month 13 does not exist: JSON Schema's date-time format is not asserted by validators)
    if "not a valid timestamp" not in invalid.detail:
        assert not Draft202012Validator(events.json_schema()).is_valid(record)


def test_timestamps_format_as_utc_millis_with_z() -> None:
    from datetime import datetime, timedelta, timezone

    moment = datetime(2026, 11, 24, 10, 30, 0, 125_999, tzinfo=timezone(timedelta(hours=1)))
    assert events.format_ts(moment) == "2026-11-24T09:30:00.125Z"
    assert events.parse_ts("2026-11-24T09:30:00.125Z") == moment.replace(microsecond=125_000)
