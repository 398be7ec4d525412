"""The lake's layout and its write semantics, for any Hadoop-compatible URI.

Layout (``<lake>`` is ``lake.uri``)::

    raw/events/dt=D/part-*.jsonl.gz           what the collector lands
    bronze/events/dt=D/                       validated, deduplicated events (Parquet)
    bronze/events/_scratch/dt=D-<id>/         ingest's decoded lines while it runs (then removed)
    quarantine/events/dt=D/                   rejected lines with source, line number and reason
    silver/refinements/dt=D/                  one row per shown proposal
    quarantine/orphans/dt=D/                  reactions/snapshots with no shown proposal
    gold/{sft,preference,kto}/dt=D/           training datasets
    gold/_manifests/dt=D/_manifest.json       the dataset funnel, hashes and config: vouches for gold

Every partition is written to a staging folder and swapped into place with two renames, so a
reader sees the previous complete partition or none, never half of one. Each partition folder
carries ``_SUCCESS`` (Spark's committer) and, where a job writes one, ``_manifest.json``.

Writers of one partition serialise on a lease, ``<table>/_leases/dt=D``, created with the
filesystem's exclusive create: a second writer (a re-mine of D-1 beside the nightly run, a
backfill, a manual ``echoctl``) waits for the first, then writes; a lease whose writer died
(same host, process gone) or that is older than its timeout is taken over. Under the lease a
writer cleans the debris of crashed writes of that partition only, and puts back the previous
partition if a crash fell between the two renames of a swap.

Gold's tables of one date commit together: the build holds the manifest partition's lease, writes
each table (its ``_manifest.json`` carries the table's content hash), and writes the gold
manifest last. Readers trust a gold table only when its hash is the one the manifest vouches for
(:func:`vouched_gold_partition`), so a crash mid-build leaves a date unreadable (with the command
that fixes it), never a new ``sft`` beside an old ``preference``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import time
import uuid
from contextlib import contextmanager, nullcontext
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def table_uri(lake: str, *parts: str) -> str:
    return "/".join([lake.rstrip("/"), *parts])


def partition_uri(lake: str, table: str, dt: str) -> str:
    return table_uri(lake, table, f"dt={dt}")


def _local_path(uri: str):
    """The local path behind ``uri`` (a plain path or file:), else None."""
    from pathlib import Path

    if uri.startswith("file:"):
        return Path(uri.removeprefix("file:").removeprefix("//"))
    return Path(uri) if uri.startswith("/") else None


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
        for uri in self.glob(pattern):
            self.delete(uri)

    def glob(self, pattern: str) -> list[str]:
        return sorted(
            str(status.getPath().toString()) for status in self.fs.globStatus(self.Path(pattern)) or []
        )

    def create_exclusive(self, uri: str, text: str) -> bool:
        """Create ``uri`` holding ``text`` unless it exists: O_EXCL on a local disk (Hadoop's local
        create checks, then creates), the filesystem's create-if-absent elsewhere (atomic on HDFS)."""
        local = _local_path(uri)
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            return True
        try:
            stream = self.fs.create(self.Path(uri), False)
        except Exception as exc:  # py4j wraps FileAlreadyExistsException
            if "AlreadyExists" in str(exc) or self.exists(uri):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def read_text(self, uri: str) -> str | None:
        local = _local_path(uri)
        if local is not None:
            try:
                return local.read_text(errors="replace")
            except FileNotFoundError:
                return None
        try:
            stream = self.fs.open(self.Path(uri))
        except Exception:
            return None  # gone meanwhile
        try:
            return bytes(stream.readAllBytes()).decode("utf-8", "replace")
        finally:
            stream.close()


class PartitionBusy(RuntimeError):
    """Another live writer holds the partition's lease for longer than this writer would wait."""


LEASE_WAIT_S = 15 * 60  # how long a second writer waits for the first
LEASE_STALE_S = 6 * 3600  # a lease this old is taken over even if its writer looks alive
LEASE_POLL_S = 2.0


def _lease_is_dead(lease: dict[str, Any]) -> bool:
    if time.time() - float(lease.get("since", 0)) > LEASE_STALE_S:
        return True
    if lease.get("host") != socket.gethostname():
        return False  # another machine's process: only the timeout can tell
    try:
        os.kill(int(lease.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


@contextmanager
def partition_lease(fs: _Fs, lake: str, table: str, dt: str, wait_s: float | None = None):
    """Hold ``<table>/_leases/dt=D`` while writing the partition; see the module docstring."""
    wait_s = LEASE_WAIT_S if wait_s is None else wait_s
    uri = table_uri(lake, table, "_leases", f"dt={dt}")
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": time.time()}
    deadline = time.monotonic() + wait_s
    while not fs.create_exclusive(uri, json.dumps(mine)):
        text = fs.read_text(uri)
        try:
            holder = json.loads(text) if text else None
        except json.JSONDecodeError:
            holder = {"since": 0}  # a torn lease file: its writer died while creating it
        if holder is None:
            continue  # released meanwhile
        if _lease_is_dead(holder):
            fs.delete(uri)  # two takers may race here: exclusive create lets only one win
            continue
        if time.monotonic() > deadline:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("since", 0))))
            raise PartitionBusy(
                f"{table} dt={dt} is being written by pid {holder.get('pid')} on {holder.get('host')} "
                f"since {since} (lease {uri}); waited {wait_s:.0f} s. If that writer is gone, delete the lease."
            )
        time.sleep(LEASE_POLL_S)
    try:
        yield
    finally:
        text = fs.read_text(uri)
        if text and mine["token"] in text:
            fs.delete(uri)


@contextmanager
def holding(spark: SparkSession, lake: str, table: str, dt: str):
    """Hold ``<table>`` dt=D's lease around several writes (then write it with ``lease=False``)."""
    with partition_lease(_Fs(spark, partition_uri(lake, table, dt)), lake, table, dt):
        yield


@contextmanager
def scratch_folder(spark: SparkSession, lake: str, table: str, dt: str):
    """Hold ``<table>`` dt=D's lease and yield a private folder for a writer's intermediate files
    (``<table>/_scratch/dt=D-<id>``), removed afterwards; a crashed writer's scratch is removed by
    the next writer, who holds the lease. Write the partition itself with ``lease=False``."""
    fs = _Fs(spark, partition_uri(lake, table, dt))
    with partition_lease(fs, lake, table, dt):
        fs.delete_glob(table_uri(lake, table, "_scratch", f"dt={dt}-*"))
        uri = table_uri(lake, table, "_scratch", f"dt={dt}-{uuid.uuid4().hex[:12]}")
        try:
            yield uri
        finally:
            fs.delete(uri)


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
    lease: bool = True,
) -> str:
    """Replace ``<lake>/<table>/dt=<dt>`` with ``df`` atomically; return the partition URI.
    ``lease=False`` when the caller already holds the partition's lease."""
    final = partition_uri(lake, table, dt)
    staging = table_uri(lake, table, "_staging", f"dt={dt}-{uuid.uuid4().hex[:12]}")
    trash = table_uri(lake, table, "_trash", f"dt={dt}-{uuid.uuid4().hex[:12]}")
    fs = _Fs(spark, final)
    with partition_lease(fs, lake, table, dt) if lease else nullcontext():
        # a crash between the two renames of an earlier swap left no partition: put the old one back
        trashed = fs.glob(table_uri(lake, table, "_trash", f"dt={dt}-*"))
        if trashed and not fs.exists(final):
            fs.rename(trashed[-1], final)
        # debris of crashed writes of this partition (no live writer: we hold its lease)
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


# ---- the same lake through pyarrow, for readers and writers without a Spark session -----------------
# (the world's collector, training, the Airflow sensors)


def arrow_fs(lake: str):
    """(pyarrow filesystem, path) for a lake URI: a local folder, file:, s3:// (also Hadoop's
    s3a:// and s3n:// spelling), hdfs:// ..."""
    import pyarrow.fs as pafs

    local = _local_path(lake)
    if local is not None or "://" not in lake:
        return pafs.LocalFileSystem(), str((local or Path(lake)).resolve())
    scheme, rest = lake.split("://", 1)
    if scheme in ("s3a", "s3n"):
        lake = f"s3://{rest}"
    return pafs.FileSystem.from_uri(lake)


def listed_dates(lake: str, table: str) -> list[str]:
    """The dates of ``table``'s ``dt=D`` folders, oldest first, complete or not."""
    import pyarrow.fs as pafs

    fs, root = arrow_fs(lake)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{table}", allow_not_found=True))
    return sorted(
        i.base_name[3:] for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("dt=")
    )


def gold_dates(lake: str) -> list[str]:
    """Dates with a complete gold build (its manifest partition carries ``_SUCCESS``)."""
    import pyarrow.fs as pafs

    fs, root = arrow_fs(lake)
    return [
        dt
        for dt in listed_dates(lake, "gold/_manifests")
        if fs.get_file_info(f"{root}/gold/_manifests/dt={dt}/_SUCCESS").type == pafs.FileType.File
    ]


def read_manifest(lake: str, dt: str) -> dict[str, Any]:
    fs, root = arrow_fs(lake)
    with fs.open_input_stream(f"{root}/gold/_manifests/dt={dt}/_manifest.json") as stream:
        return json.loads(stream.read())


class UnvouchedPartition(RuntimeError):
    """A gold table's partition is not the one its date's manifest vouches for."""


def vouched_gold_partition(lake: str, table: str, dt: str) -> str:
    """The path of ``gold/<table>/dt=D`` after checking that its content hash is the one the gold
    manifest of D vouches for; else :class:`UnvouchedPartition` saying how to repair it."""
    fs, root = arrow_fs(lake)
    path = f"{root}/gold/{table}/dt={dt}"
    rebuild = f"rebuild it: echoctl build-dataset --date {dt}"
    try:
        vouched = read_manifest(lake, dt)["datasets"][table]["sha256"]
    except (FileNotFoundError, KeyError) as exc:
        raise UnvouchedPartition(
            f"gold dt={dt} has no manifest entry for {table} ({exc}); {rebuild}"
        ) from exc
    try:
        with fs.open_input_stream(f"{path}/_manifest.json") as stream:
            found = json.loads(stream.read()).get("sha256")
    except FileNotFoundError:
        found = None
    if found != vouched:
        raise UnvouchedPartition(
            f"gold/{table} dt={dt} is not the partition its manifest vouches for (content "
            f"{str(found)[:12]}, manifest {vouched[:12]}): a build of {dt} did not finish; {rebuild}"
        )
    return path


def gzip_lines(lines: list[str]) -> bytes:
    """Lines as one reproducible gzip member (no timestamp in the header): a raw file's bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz:
        for line in lines:
            gz.write(line.encode("utf-8"))
            gz.write(b"\n")
    return buffer.getvalue()


def write_bytes_atomic(lake: str, relative: str, data: bytes) -> str:
    """Write ``<lake>/<relative>``: to a hidden temporary name first, then renamed into place, so
    a reader never sees half a file (on object stores the rename is a copy: whole, not atomic)."""
    fs, root = arrow_fs(lake)
    path = f"{root}/{relative}"
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp"
    with fs.open_output_stream(tmp, compression=None) as out:  # the bytes as given
        out.write(data)
    fs.move(tmp, path)
    return f"{lake.rstrip('/')}/{relative}"


def delete_matching(lake: str, relative_folder: str, pattern: str) -> None:
    """Delete the files directly in ``<lake>/<relative_folder>`` whose names match ``pattern``."""
    import pyarrow.fs as pafs

    fs, root = arrow_fs(lake)
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/{relative_folder}", allow_not_found=True)):
        if info.type == pafs.FileType.File and fnmatch(info.base_name, pattern):
            fs.delete_file(info.path)


def partition_dates(spark: SparkSession, lake: str, table: str) -> list[str]:
    """The dates of ``table``'s complete partitions (those with ``_SUCCESS``), oldest first."""
    fs = _Fs(spark, table_uri(lake, table))
    found = fs.glob(table_uri(lake, table, "dt=*"))
    return sorted(uri.rsplit("dt=", 1)[1] for uri in found if fs.exists(f"{uri}/_SUCCESS"))


def read_partition_manifest(spark: SparkSession, lake: str, table: str, dt: str) -> dict[str, Any] | None:
    """A partition's ``_manifest.json``, or None if it has none."""
    uri = f"{partition_uri(lake, table, dt)}/_manifest.json"
    text = _Fs(spark, uri).read_text(uri)
    return json.loads(text) if text else None


def exists(spark: SparkSession, uri: str) -> bool:
    return _Fs(spark, uri).exists(uri)


def is_complete(spark: SparkSession, lake: str, table: str, dt: str) -> bool:
    return _Fs(spark, partition_uri(lake, table, dt)).exists(f"{partition_uri(lake, table, dt)}/_SUCCESS")
