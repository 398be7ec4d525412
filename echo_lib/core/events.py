"""Event contract v1: the telemetry an IDE client sends, defined once.

The field specs below are the single definition. Everything else is derived from them:
:data:`ARROW_SCHEMA` (the bronze Parquet layout), :func:`json_schema` (exported for producers
and other languages), and :func:`validate_event` (readable reason codes for quarantine).
``docs/events.md`` documents the contract with an example of every event type.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa

SCHEMA_VERSION = 1

FieldType = Literal["string", "int", "float", "timestamp"]

# RFC 3339 in UTC with a 'Z' suffix, milliseconds optional: 2026-11-24T09:30:00.125Z
TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    description: str
    required: bool = True
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None


ID_MAX = 128
TEXT_MAX = 16_384  # prefix/suffix windows and snapshots are bounded by the client
PROPOSAL_MAX = 4_096
INSERT_MAX = 65_536  # one paste

COMMON_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "event_id",
        "string",
        "globally unique id of this event (UUID); duplicates are redeliveries",
        max_length=ID_MAX,
    ),
    FieldSpec("schema_version", "int", "contract version; always 1 here", minimum=1, maximum=1),
    FieldSpec("event_type", "string", "one of the event types below", max_length=32),
    FieldSpec("ts", "timestamp", "client wall clock, RFC 3339 UTC with Z (may be skewed)"),
    FieldSpec(
        "seq", "int", "per-session counter starting at 0; orders events regardless of clock skew", minimum=0
    ),
    FieldSpec("session_id", "string", "one editing session of one document", max_length=ID_MAX),
    FieldSpec("user_id", "string", "pseudonymous user id (never a name or email)", max_length=ID_MAX),
    FieldSpec("repo_id", "string", "repository the document belongs to", max_length=ID_MAX),
    FieldSpec("doc_id", "string", "document (file path hash or path inside the repo)", max_length=1024),
    FieldSpec("language", "string", "language id of the document, e.g. python", max_length=32),
    FieldSpec("client", "string", "client name/version, e.g. echo-world/0.1", max_length=64),
)

REQUEST_ID = FieldSpec(
    "request_id", "string", "links shown, reaction and snapshots of one proposal", max_length=ID_MAX
)
OFFSET = FieldSpec("offset", "int", "character offset in the document (Unicode code points)", minimum=0)

EVENT_FIELDS: dict[str, tuple[FieldSpec, ...]] = {
    "session_start": (
        FieldSpec("doc_len", "int", "length of the document when the session starts", minimum=0),
    ),
    "session_end": (FieldSpec("doc_len", "int", "length of the document when the session ends", minimum=0),),
    "completion_shown": (
        REQUEST_ID,
        FieldSpec(
            "model_version",
            "string",
            "model that produced the proposal (registry version or URI)",
            max_length=256,
        ),
        OFFSET,
        FieldSpec("prefix", "string", "bounded window of text before the cursor", max_length=TEXT_MAX),
        FieldSpec("suffix", "string", "bounded window of text after the cursor", max_length=TEXT_MAX),
        FieldSpec("proposal", "string", "the text shown as ghost text", max_length=PROPOSAL_MAX),
        FieldSpec(
            "confidence",
            "float",
            "model confidence in [0, 1] (shown only above the threshold); absent when the client "
            "does not report one (logs imported from Continue or Tabby)",
            required=False,
            minimum=0,
            maximum=1,
        ),
        FieldSpec(
            "latency_ms",
            "int",
            "request-to-render latency; absent when the client does not log it (Tabby)",
            required=False,
            minimum=0,
        ),
        FieldSpec(
            "trigger", "string", "where the request fired", required=False, enum=("line_start", "mid_line")
        ),
    ),
    "completion_accepted": (
        REQUEST_ID,
        FieldSpec(
            "accepted_len",
            "int",
            "characters of the proposal accepted (less than its length: partial)",
            minimum=0,
        ),
    ),
    "completion_rejected": (
        REQUEST_ID,
        FieldSpec(
            "reason", "string", "why the proposal went away", enum=("dismissed", "typed_over", "timed_out")
        ),
    ),
    "doc_change": (
        OFFSET,
        FieldSpec("removed_len", "int", "characters removed at offset", minimum=0),
        FieldSpec("inserted", "string", "text inserted at offset after the removal", max_length=INSERT_MAX),
        FieldSpec(
            "cause",
            "string",
            "what made the change",
            enum=("typing", "delete", "paste", "undo", "redo", "accept"),
        ),
        FieldSpec("request_id", "string", "set when cause is accept", required=False, max_length=ID_MAX),
    ),
    "region_snapshot": (
        REQUEST_ID,
        FieldSpec(
            "age_s",
            "int",
            "seconds after the reaction this snapshot was taken (e.g. 5, 30, 120, 600)",
            minimum=0,
        ),
        OFFSET,
        FieldSpec(
            "text",
            "string",
            "what stands where the proposal went (for a rejection: what the user typed)",
            max_length=TEXT_MAX,
        ),
    ),
    "doc_saved": (
        FieldSpec(
            "content_sha256", "string", "SHA-256 hex digest of the saved document (UTF-8)", max_length=64
        ),
    ),
}

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_FIELDS)


def all_fields() -> list[FieldSpec]:
    """Every field of every type, each name once (shared names must agree on their type)."""
    seen: dict[str, FieldSpec] = {f.name: f for f in COMMON_FIELDS}
    for specs in EVENT_FIELDS.values():
        for spec in specs:
            if spec.name in seen and seen[spec.name].type != spec.type:
                raise TypeError(f"field {spec.name} has two types in the contract")
            seen.setdefault(spec.name, spec)
    return list(seen.values())


# --------------------------------------------------------------------------- Arrow

INT64 = (-(2**63), 2**63 - 1)  # bronze stores integers as int64: a larger JSON integer is invalid

_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def _arrow_schema() -> pa.Schema:
    common = {f.name for f in COMMON_FIELDS}
    return pa.schema(
        [
            pa.field(
                f.name,
                _ARROW_TYPES[f.type],
                nullable=f.name not in common,
                metadata={"description": f.description},
            )
            for f in all_fields()
        ],
        metadata={"echo.schema_version": str(SCHEMA_VERSION)},
    )


ARROW_SCHEMA: pa.Schema = _arrow_schema()
"""One wide, flat schema for all event types; fields a type does not have are null."""


# --------------------------------------------------------------------------- JSON Schema


def _json_property(spec: FieldSpec) -> dict[str, Any]:
    prop: dict[str, Any] = {"description": spec.description}
    if spec.type == "string":
        prop["type"] = "string"
    elif spec.type == "int":
        prop.update(type="integer", maximum=INT64[1])
    elif spec.type == "float":
        prop["type"] = "number"
    else:
        prop.update(type="string", format="date-time", pattern=TS_PATTERN)
    if spec.max_length is not None:
        prop["maxLength"] = spec.max_length
    if spec.minimum is not None:
        prop["minimum"] = spec.minimum
    if spec.maximum is not None:
        prop["maximum"] = spec.maximum
    if spec.enum is not None:
        prop["enum"] = list(spec.enum)
    return prop


def event_type_schema(event_type: str) -> dict[str, Any]:
    specs = COMMON_FIELDS + EVENT_FIELDS[event_type]
    properties = {s.name: _json_property(s) for s in specs}
    properties["event_type"] = {"const": event_type, "description": properties["event_type"]["description"]}
    return {
        "type": "object",
        "properties": properties,
        "required": [s.name for s in specs if s.required],
        "additionalProperties": False,
    }


@functools.cache
def json_schema() -> dict[str, Any]:
    """The whole contract as one JSON Schema (draft 2020-12), discriminated by ``event_type``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://echo.dev/schemas/events/v{SCHEMA_VERSION}.json",
        "title": f"Echo telemetry event, contract v{SCHEMA_VERSION}",
        "type": "object",
        "required": ["event_type"],
        "properties": {"event_type": {"enum": list(EVENT_TYPES)}},
        "oneOf": [{"$ref": f"#/$defs/{t}"} for t in EVENT_TYPES],
        "$defs": {t: event_type_schema(t) for t in EVENT_TYPES},
    }


# --------------------------------------------------------------------------- validation

# Reason codes are part of the contract: quarantine rows carry them and dashboards count them.
REASONS = (
    "malformed_json",
    "not_an_object",
    "invalid_utf8",
    "truncated_gzip",
    "missing_field",
    "wrong_type",
    "unknown_event_type",
    "unknown_field",
    "oversize_field",
    "oversize_file",
    "invalid_value",
    "unsupported_schema_version",
)


@dataclass(frozen=True)
class Invalid:
    """Why a record breaks the contract: a reason code and a human sentence."""

    reason: str
    detail: str


_TS_RE = re.compile(TS_PATTERN)
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "timestamp": (str,),
    "int": (int,),
    "float": (int, float),
}
_TYPE_NAMES = {"string": "string", "timestamp": "timestamp string", "int": "integer", "float": "number"}
_SPECS: dict[str, dict[str, FieldSpec]] = {
    t: {f.name: f for f in COMMON_FIELDS + extra} for t, extra in EVENT_FIELDS.items()
}


def validate_event(record: Any) -> Invalid | None:
    """Check one decoded JSON value against the contract; ``None`` means valid.

    Compiled from the same field specs as :func:`json_schema` (tests check the two agree), but
    written out in plain Python: ingest runs it on every line, and it is ~20x faster than a
    generic JSON Schema validator. Checks run in a fixed order so each record gets one reason.
    """
    if not isinstance(record, dict):
        return Invalid("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    event_type = record.get("event_type")
    if event_type is None:
        return Invalid("missing_field", "event_type is missing")
    if not isinstance(event_type, str):
        return Invalid("wrong_type", f"event_type must be a string, got {type(event_type).__name__}")
    specs = _SPECS.get(event_type)
    if specs is None:
        return Invalid("unknown_event_type", f"unknown event_type {event_type!r}")
    version = record.get("schema_version")
    if type(version) is int and version != SCHEMA_VERSION:
        return Invalid("unsupported_schema_version", f"schema_version {version} is not {SCHEMA_VERSION}")
    for name, spec in specs.items():
        if spec.required and name not in record:
            return Invalid("missing_field", f"{name} is missing (required for {event_type})")
    for name in record:
        if name not in specs:
            return Invalid("unknown_field", f"{name!r} is not a field of {event_type}")
    for name, value in record.items():
        spec = specs[name]
        if not isinstance(value, _PYTHON_TYPES[spec.type]) or isinstance(value, bool):
            return Invalid(
                "wrong_type", f"{name}: expected {_TYPE_NAMES[spec.type]}, got {type(value).__name__}"
            )
    for name, value in record.items():
        spec = specs[name]
        if spec.max_length is not None and len(value) > spec.max_length:
            return Invalid("oversize_field", f"{name} is longer than {spec.max_length} characters")
    for name, value in record.items():
        problem = _value_problem(specs[name], value)
        if problem:
            return Invalid("invalid_value", f"{name}: {problem}")
    return None


def _value_problem(spec: FieldSpec, value: Any) -> str | None:
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return "outside the 64-bit integer range"
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON can escape a lone surrogate (\\ud800); text cannot hold it
            return f"an unpaired surrogate at character {exc.start} is not Unicode text"
    if spec.minimum is not None and value < spec.minimum:
        return f"{value} is below the minimum {spec.minimum:g}"
    if spec.maximum is not None and value > spec.maximum:
        return f"{value} is above the maximum {spec.maximum:g}"
    if spec.enum is not None and value not in spec.enum:
        return f"{value!r} is not one of {', '.join(spec.enum)}"
    if spec.type == "float" and not math.isfinite(value):
        return "must be a finite number"
    if spec.type == "timestamp":
        if not _TS_RE.match(value):
            return f"{value!r} is not RFC 3339 UTC with Z (e.g. 2026-11-24T09:30:00.125Z)"
        try:
            parse_ts(value)
        except ValueError as exc:
            return f"{value!r} is not a valid timestamp: {exc}"
    return None


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def format_ts(moment: datetime) -> str:
    """Format an aware datetime the way the contract wants: UTC, millisecond precision, 'Z'."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_arrow(records: list[dict[str, Any]]) -> pa.Table:
    """Valid records -> a table in :data:`ARROW_SCHEMA` (timestamps parsed, absent fields null)."""
    columns: dict[str, list[Any]] = {f.name: [] for f in ARROW_SCHEMA}
    for record in records:
        for name, values in columns.items():
            value = record.get(name)
            values.append(parse_ts(value) if name == "ts" and value is not None else value)
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)


def from_arrow(table: pa.Table) -> list[dict[str, Any]]:
    """Inverse of :func:`to_arrow`: drop nulls, format timestamps back to contract strings."""
    out = []
    for row in table.to_pylist():
        record = {k: v for k, v in row.items() if v is not None}
        record["ts"] = format_ts(record["ts"])
        out.append(record)
    return out


def dumps(record: dict[str, Any]) -> str:
    """The canonical JSON line for an event (stable key order, compact, UTF-8 kept)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


if __name__ == "__main__":  # python -m echo_lib.core.events > docs/schemas/events.v1.json
    print(json.dumps(json_schema(), indent=2))
