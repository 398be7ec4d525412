"""Raw JSONL.gz -> bronze events + quarantine, for one partition.

The Python parts (gzip decoding that survives a truncated member, UTF-8 and contract checks) run
inside one Arrow-based ``mapInArrow`` over whole files; everything after (split, dedupe, counts)
is Spark built-ins. The reason codes are the contract's (:data:`echo_lib.core.events.REASONS`).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from echo_lib.core.events import ARROW_SCHEMA, Invalid, parse_ts, validate_event

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

MAX_LINE_BYTES = 1 << 20  # default per-line budget (config ingest.max_line_bytes)
MAX_FILE_BYTES = 4 << 30  # default per-file budget of decompressed bytes (config ingest.max_file_bytes)
INFLATE_CHUNK = 1 << 20  # a file is decompressed this much at a time: memory stays bounded
RAW_KEEP_CHARS = 64_000  # quarantine keeps this much of a bad line
BATCH_ROWS = 20_000
META_FIELDS = ("_source_file", "_line_no")


@dataclass(frozen=True)
class Limits:
    """Per-line and per-file budgets: what a hostile or broken file may cost before it is cut."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_file_bytes: int = MAX_FILE_BYTES


_DAMAGED = object()  # marker: the gzip stream ends early or is corrupt


def _inflate(data: bytes, chunk: int = INFLATE_CHUNK) -> Iterator[bytes | object]:
    """Decompressed pieces of at most ``chunk`` bytes of a (multi-member) gzip file, then
    :data:`_DAMAGED` if the stream is cut or corrupt. Never inflates a whole member at once, so a
    small file that expands to gigabytes costs ``chunk`` bytes of memory, not gigabytes."""
    rest = data
    while rest:
        decoder = zlib.decompressobj(wbits=31)
        tail = rest
        while not decoder.eof:
            try:
                out = decoder.decompress(tail, chunk)
            except zlib.error:
                yield _DAMAGED
                return
            if out:
                yield out
            tail = decoder.unconsumed_tail
            if not tail and not out and not decoder.eof:  # input used up inside a member
                with contextlib.suppress(zlib.error):
                    out = decoder.flush()
                    if out:
                        yield out
                yield _DAMAGED
                return
        rest = decoder.unused_data


def gzip_lines(data: bytes, limits: Limits = Limits()) -> Iterator[tuple[int, bytes, Invalid | None]]:
    """(line number, bytes, problem) for every line of a (multi-member) gzip file.

    Nothing stops reading but the file's budget: a truncated or corrupt member yields the lines
    decoded before the damage and the partial last line with ``truncated_gzip``; a line over
    ``limits.max_line_bytes`` yields its first bytes with ``oversize_field`` (the rest is skipped,
    never buffered); past ``limits.max_file_bytes`` of decompressed data one ``oversize_file``
    row records where reading stopped (the raw file stays in the lake for a rerun with a larger
    budget).
    """
    line_no, produced = 0, 0
    pending = bytearray()  # the current line, at most max_line_bytes + 1 bytes of it
    line_size = 0  # its full size, including bytes not kept

    def finish(problem: Invalid | None) -> tuple[int, bytes, Invalid | None]:
        nonlocal line_size
        raw, size = bytes(pending), line_size
        pending.clear()
        line_size = 0
        if problem is None and size > limits.max_line_bytes:
            problem = Invalid("oversize_field", f"line of {size} bytes exceeds {limits.max_line_bytes}")
        return line_no, raw[:RAW_KEEP_CHARS] if size > limits.max_line_bytes else raw, problem

    for piece in _inflate(data):
        if piece is _DAMAGED:
            line_no += 1
            yield finish(Invalid("truncated_gzip", "file ends inside a gzip member; partial line kept"))
            return
        assert isinstance(piece, bytes)
        produced += len(piece)
        if produced > limits.max_file_bytes:
            line_no += 1
            yield finish(
                Invalid(
                    "oversize_file",
                    f"decompresses to more than {limits.max_file_bytes} bytes; the lines from here on"
                    " were not read (the raw file is kept: raise ingest.max_file_bytes and rerun)",
                )
            )
            return
        start = 0
        while start < len(piece):
            newline = piece.find(b"\n", start)
            stop = len(piece) if newline < 0 else newline
            room = limits.max_line_bytes + 1 - len(pending)  # enough to know a line is oversize
            if room > 0:
                pending += piece[start : start + min(stop - start, room)]
            line_size += stop - start
            if newline < 0:
                break
            line_no += 1
            yield finish(None)
            start = newline + 1
    if pending or line_size:
        line_no += 1
        yield finish(None)  # a last line without its newline is still a line


def check_line(
    raw: bytes, max_line_bytes: int = MAX_LINE_BYTES
) -> tuple[dict[str, Any] | None, Invalid | None]:
    """Decode and validate one line: (record, None) or (None, why). Never raises on data."""
    if len(raw) > max_line_bytes:
        return None, Invalid("oversize_field", f"line of {len(raw)} bytes exceeds {max_line_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Invalid("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, Invalid("malformed_json", f"{exc.msg} at column {exc.colno}")
    except RecursionError:
        return None, Invalid("malformed_json", "nested too deeply to decode")
    except ValueError as exc:  # e.g. an integer literal of more than 4,300 digits
        return None, Invalid("malformed_json", str(exc)[:200])
    invalid = validate_event(record)
    return (None, invalid) if invalid else (record, None)


def printable(text: str) -> str:
    """``text`` safe for Arrow and Parquet: unpaired surrogates escaped (\\udXXX), not raised."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def lines_schema() -> StructType:
    """Spark schema of the decoded lines: every event field, plus lineage and the verdict."""
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = from_arrow_schema(_lines_arrow_schema())
    return schema


def _lines_arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [f.with_nullable(True) for f in ARROW_SCHEMA]  # quarantined lines have no event fields
        + [
            pa.field("_source_file", pa.string()),
            pa.field("_line_no", pa.int64()),
            pa.field("_reason", pa.string()),
            pa.field("_detail", pa.string()),
            pa.field("_raw", pa.string()),
        ]
    )


def _decode_batches(batches: Iterator[pa.RecordBatch], limits: Limits = Limits()) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: binaryFile rows (path, content) -> one row per line, valid or quarantined."""
    schema = _lines_arrow_schema()
    for batch in batches:
        paths, contents = batch.column("path").to_pylist(), batch.column("content").to_pylist()
        for path, content in zip(paths, contents, strict=True):
            rows: list[tuple[int, bytes, dict[str, Any] | None, Invalid | None]] = []
            for line_no, raw, problem in gzip_lines(content, limits):
                record = None
                if problem is None:
                    if not raw.strip():
                        continue  # blank lines (e.g. a trailing newline) are not events
                    record, problem = check_line(raw, limits.max_line_bytes)
                rows.append((line_no, raw, record, problem))
                if len(rows) >= BATCH_ROWS:
                    yield _lines_batch(path, rows, schema)
                    rows = []
            if rows:
                yield _lines_batch(path, rows, schema)


def _lines_batch(path: str, rows: list, schema: pa.Schema) -> pa.RecordBatch:
    """One Arrow batch of decoded lines. A record that passed the contract but still cannot be
    stored (a case the validator does not foresee) is quarantined alone, never failing the job."""
    import pyarrow as pa

    def columns(rows) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {n: [] for n in schema.names}
        for line_no, raw, record, invalid in rows:
            for name in ARROW_SCHEMA.names:
                value = record.get(name) if record else None
                out[name].append(parse_ts(value) if name == "ts" and value is not None else value)
            out["_source_file"].append(printable(path))
            out["_line_no"].append(line_no)
            out["_reason"].append(invalid.reason if invalid else None)
            out["_detail"].append(printable(invalid.detail) if invalid else None)
            out["_raw"].append(raw[:RAW_KEEP_CHARS].decode("utf-8", "replace") if invalid else None)
        return out

    try:
        return pa.RecordBatch.from_pydict(columns(rows), schema=schema)
    except (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeError):
        pass
    checked = []
    for row in rows:
        line_no, raw, record, invalid = row
        if record is not None:
            try:
                pa.RecordBatch.from_pydict(columns([row]), schema=schema)
            except (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeError) as exc:
                why = f"valid JSON the bronze schema cannot store: {type(exc).__name__}: {exc}"
                row = (line_no, raw, None, Invalid("invalid_value", why[:500]))
        checked.append(row)
    return pa.RecordBatch.from_pydict(columns(checked), schema=schema)


def decode_files(files: DataFrame, limits: Limits = Limits()) -> DataFrame:
    """``binaryFile`` rows -> one row per line with typed event columns or a quarantine reason."""
    import functools

    body = functools.partial(_decode_batches, limits=limits)
    return files.select("path", "content").mapInArrow(body, lines_schema())


def valid_events(lines: DataFrame) -> DataFrame:
    return lines.where("_reason IS NULL").drop("_reason", "_detail", "_raw")


def quarantined(lines: DataFrame) -> DataFrame:
    return (
        lines.where("_reason IS NOT NULL")
        .select("_source_file", "_line_no", "_reason", "_detail", "_raw")
        .withColumnsRenamed(
            {
                "_source_file": "source_file",
                "_line_no": "line_no",
                "_reason": "reason",
                "_detail": "detail",
                "_raw": "raw",
            }
        )
    )


def _scrub_batches(frames):
    from echo_lib.mining.privacy import scrub

    for frame in frames:
        for name in ("raw", "detail"):
            frame[name] = [scrub(value)[0] for value in frame[name]]
        yield frame


def scrubbed(quarantine: DataFrame) -> DataFrame:
    """Quarantine keeps a bad line for diagnosis, but not the secrets, e-mail addresses or public
    IPs in it (the same scrubber as gold's)."""
    return quarantine.mapInPandas(_scrub_batches, quarantine.schema)


def dedupe_events(events: DataFrame) -> DataFrame:
    """At-least-once delivery: keep one row per ``event_id`` (the first delivered copy)."""
    from echo_lib.core.spark import first_per_key

    return first_per_key(events, ["event_id"], "_source_file", "_line_no")


def run_ingest(spark, lake: str, dt: str, limits: Limits = Limits()) -> dict[str, Any]:
    """Ingest ``raw/events/dt=<dt>`` into bronze and quarantine; return the partition manifest.

    Counts reconcile exactly: ``lines_read == valid + quarantined`` and
    ``valid == written + duplicates_removed``. Rerunning on the same input rewrites identical rows.
    """
    from pyspark.sql import functions as F

    from echo_lib.core import lake as lake_io

    raw = lake_io.partition_uri(lake, "raw/events", dt)
    if not lake_io.exists(spark, raw):
        raise FileNotFoundError(f"no raw partition for {dt}: {raw} does not exist")
    files = spark.read.format("binaryFile").option("pathGlobFilter", "*.jsonl.gz").load(raw)
    with lake_io.scratch_folder(spark, lake, "bronze/events", dt) as scratch:
        # decode once into columnar scratch files: every later step reads only the columns it
        # needs, and nothing has to fit in executor memory (a persist spilled at millions of events)
        decode_files(files, limits).write.mode("overwrite").parquet(scratch)
        lines = spark.read.schema(lines_schema()).parquet(scratch)
        counts = {
            r["_reason"]: r["n"] for r in lines.groupBy("_reason").agg(F.count("*").alias("n")).collect()
        }
        valid = valid_events(lines)
        written = valid.select("event_id").distinct().count()  # dedupe_events keeps one row per id
        n_valid = counts.pop(None, 0)
        manifest = {
            "dt": dt,
            "source": raw,
            "files": sorted(r["path"] for r in files.select("path").collect()),
            "lines_read": n_valid + sum(counts.values()),
            "valid": n_valid,
            "quarantined": sum(counts.values()),
            "quarantined_by_reason": dict(sorted(counts.items())),
            "duplicates_removed": n_valid - written,
            "written": written,
        }
        lake_io.write_partition(
            spark,
            dedupe_events(valid),
            lake,
            "bronze/events",
            dt,
            manifest=manifest,
            sort_within=["session_id", "seq"],
            lease=False,  # held by scratch_folder
        )
        lake_io.write_partition(
            spark,
            scrubbed(quarantined(lines)),
            lake,
            "quarantine/events",
            dt,
            manifest={"dt": dt, "quarantined_by_reason": manifest["quarantined_by_reason"]},
            files=1,
        )
    return manifest
