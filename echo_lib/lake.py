"""The lake's layout and its write semantics, for any Hadoop-compatible URI.

Layout (``<lake>`` is ``lake.uri``)::

    raw/events/dt=D/part-*.jsonl.gz           what the collector lands
    bronze/events/dt=D/                       validated, deduplicated events (Parquet)
    quarantine/events/dt=D/                   rejected lines with source, line number and reason
    silver/refinements/dt=D/                  one row per shown proposal
    quarantine/orphans/dt=D/                  reactions/snapshots with no shown proposal
    gold/{sft,preference,kto}/dt=D/           training datasets
    gold/_manifests/dt=D/_manifest.json       the dataset funnel, hashes and config

Every partition is written to a staging folder and swapped into place with two renames, so a
reader sees the previous complete partition or none, never half of one. Each partition folder
carries ``_SUCCESS`` (Spark's committer) and, where a job writes one, ``_manifest.json``.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def table_uri(lake: str, *parts: str) -> str:
    return "/".join([lake.rstrip("/"), *parts])


def partition_uri(lake: str, table: str, dt: str) -> str:
    return table_uri(lake, table, f"dt={dt}")


class _Fs:
    """The Hadoop FileSystem behind a URI (local disk, s3a://, hdfs://), through Spark's JVM."""

    def __init__(self, spark: SparkSession, uri: str) -> None:
        jvm = spark.sparkContext._jvm
        self.Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self.Path(uri).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self.Path(uri))

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self.Path(src), self.Path(dst)):
            raise OSError(f"rename {src} -> {dst} failed")

    def delete(self, uri: str) -> None:
        self.fs.delete(self.Path(uri), True)

    def write_text(self, uri: str, text: str) -> None:
        stream = self.fs.create(self.Path(uri), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def delete_glob(self, pattern: str) -> None:
        for status in self.fs.globStatus(self.Path(pattern)) or []:
            self.fs.delete(status.getPath(), True)


def write_partition(
    spark: SparkSession,
    df: DataFrame,
    lake: str,
    table: str,
    dt: str,
    *,
    manifest: dict[str, Any] | None = None,
    sort_within: list[str] | None = None,
    files: int | None = None,
) -> str:
    """Replace ``<lake>/<table>/dt=<dt>`` with ``df`` atomically; return the partition URI."""
    final = partition_uri(lake, table, dt)
    staging = table_uri(lake, table, "_staging", f"dt={dt}-{uuid.uuid4().hex[:12]}")
    trash = table_uri(lake, table, "_trash", f"dt={dt}-{uuid.uuid4().hex[:12]}")
    fs = _Fs(spark, final)
    # debris of an earlier crashed write of this same partition (other dates may be writing now)
    fs.delete_glob(table_uri(lake, table, "_staging", f"dt={dt}-*"))
    fs.delete_glob(table_uri(lake, table, "_trash", f"dt={dt}-*"))
    out = df.coalesce(files) if files else df
    if sort_within:
        out = out.sortWithinPartitions(*sort_within)
    out.write.mode("overwrite").parquet(staging)
    if manifest is not None:
        fs.write_text(
            f"{staging}/_manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str)
        )
    if fs.exists(final):
        fs.rename(final, trash)
    fs.rename(staging, final)
    fs.delete(trash)
    return final


def exists(spark: SparkSession, uri: str) -> bool:
    return _Fs(spark, uri).exists(uri)


def is_complete(spark: SparkSession, lake: str, table: str, dt: str) -> bool:
    return _Fs(spark, partition_uri(lake, table, dt)).exists(f"{partition_uri(lake, table, dt)}/_SUCCESS")
