"""Raw JSONL.gz -> bronze events + quarantine, for one partition.

The Python parts (gzip decoding that survives a truncated member, UTF-8 and contract checks) run
inside one Arrow-based ``mapInArrow`` over whole files; everything after (split, dedupe, counts)
is Spark built-ins. The reason codes are the contract's (:data:`echo_lib.events.REASONS`).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from echo_lib.events import ARROW_SCHEMA, Invalid, parse_ts, validate_event

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

MAX_LINE_BYTES = 1 << 20  # a line longer than this cannot be a valid event: quarantined as oversize
RAW_KEEP_CHARS = 64_000  # quarantine keeps this much of a bad line
META_FIELDS = ("_source_file", "_line_no")


def gzip_lines(data: bytes) -> Iterator[tuple[int, bytes, str | None]]:
    """(line number, bytes, problem) for every line of a (multi-member) gzip file.

    A truncated or corrupt member does not stop reading: the lines decoded before the damage are
    returned normally and the partial last line is returned with problem ``truncated_gzip``.
    """
    decoder = zlib.decompressobj(wbits=31)
    pending, line_no, rest = b"", 0, data
    in_member, damaged = bool(data), False
    while rest:
        try:
            pending += decoder.decompress(rest)
        except zlib.error:
            damaged = True
            break
        *complete, pending = pending.split(b"\n")
        for line in complete:
            line_no += 1
            yield line_no, line, None
        if decoder.eof:  # end of one member; another may follow
            rest, decoder = decoder.unused_data, zlib.decompressobj(wbits=31)
            in_member = bool(rest)
        else:
            rest = b""
    if in_member or damaged:
        with contextlib.suppress(zlib.error):  # the damaged tail may not flush
            pending += decoder.flush()
        *complete, pending = pending.split(b"\n")
        for line in complete:
            line_no += 1
            yield line_no, line, None
        yield line_no + 1, pending, "truncated_gzip"
    elif pending:
        yield line_no + 1, pending, None  # a last line without its newline is still a line


def check_line(raw: bytes) -> tuple[dict[str, Any] | None, Invalid | None]:
    """Decode and validate one line: (record, None) or (None, why)."""
    if len(raw) > MAX_LINE_BYTES:
        return None, Invalid("oversize_field", f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Invalid("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, Invalid("malformed_json", f"{exc.msg} at column {exc.colno}")
    invalid = validate_event(record)
    return (None, invalid) if invalid else (record, None)


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


def _decode_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: binaryFile rows (path, content) -> one row per line."""
    import pyarrow as pa

    schema = _lines_arrow_schema()
    names = schema.names
    for batch in batches:
        paths, contents = batch.column("path").to_pylist(), batch.column("content").to_pylist()
        for path, content in zip(paths, contents, strict=True):
            columns: dict[str, list[Any]] = {n: [] for n in names}
            for line_no, raw, problem in gzip_lines(content):
                if problem:
                    record, invalid = (
                        None,
                        Invalid(problem, "file ends inside a gzip member; partial line kept"),
                    )
                elif not raw.strip():
                    continue  # blank lines (e.g. a trailing newline) are not events
                else:
                    record, invalid = check_line(raw)
                for name in ARROW_SCHEMA.names:
                    value = record.get(name) if record else None
                    columns[name].append(parse_ts(value) if name == "ts" and value is not None else value)
                columns["_source_file"].append(path)
                columns["_line_no"].append(line_no)
                columns["_reason"].append(invalid.reason if invalid else None)
                columns["_detail"].append(invalid.detail if invalid else None)
                columns["_raw"].append(raw[:RAW_KEEP_CHARS].decode("utf-8", "replace") if invalid else None)
                if len(columns["_line_no"]) >= 20_000:
                    yield pa.RecordBatch.from_pydict(columns, schema=schema)
                    columns = {n: [] for n in names}
            if columns["_line_no"]:
                yield pa.RecordBatch.from_pydict(columns, schema=schema)


def decode_files(files: DataFrame) -> DataFrame:
    """``binaryFile`` rows -> one row per line with typed event columns or a quarantine reason."""
    return files.select("path", "content").mapInArrow(_decode_batches, lines_schema())


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


def dedupe_events(events: DataFrame) -> DataFrame:
    """At-least-once delivery: keep one row per ``event_id`` (the first delivered copy)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = Window.partitionBy("event_id").orderBy("_source_file", "_line_no")
    return events.withColumn("_copy", F.row_number().over(first)).where("_copy = 1").drop("_copy")


def run_ingest(spark, lake: str, dt: str) -> dict[str, Any]:
    """Ingest ``raw/events/dt=<dt>`` into bronze and quarantine; return the partition manifest.

    Counts reconcile exactly: ``lines_read == valid + quarantined`` and
    ``valid == written + duplicates_removed``. Rerunning on the same input rewrites identical rows.
    """
    from pyspark.sql import functions as F

    from echo_lib import lake as lake_io

    raw = lake_io.partition_uri(lake, "raw/events", dt)
    if not lake_io.exists(spark, raw):
        raise FileNotFoundError(f"no raw partition for {dt}: {raw} does not exist")
    files = spark.read.format("binaryFile").option("pathGlobFilter", "*.jsonl.gz").load(raw)
    lines = decode_files(files).persist()
    try:
        counts = {
            r["_reason"]: r["n"] for r in lines.groupBy("_reason").agg(F.count("*").alias("n")).collect()
        }
        valid = valid_events(lines)
        unique = dedupe_events(valid).persist()
        written = unique.count()
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
            spark, unique, lake, "bronze/events", dt, manifest=manifest, sort_within=["session_id", "seq"]
        )
        lake_io.write_partition(
            spark,
            quarantined(lines),
            lake,
            "quarantine/events",
            dt,
            manifest={"dt": dt, "quarantined_by_reason": manifest["quarantined_by_reason"]},
            files=1,
        )
    finally:
        lines.unpersist()
    unique.unpersist()
    return manifest
