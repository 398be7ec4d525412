"""Partition writes: concurrent writers serialise on a lease, crashes leave a complete partition."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from echo_lib.core import lake as lake_io

DT = "2026-11-24"


def rows(spark, tmp: Path) -> list[tuple]:
    return sorted(map(tuple, spark.read.parquet(str(tmp / "t" / f"dt={DT}")).collect()))


def leftovers(tmp: Path) -> list[str]:
    return [p.name for sub in ("_staging", "_trash", "_leases") for p in (tmp / "t" / sub).glob("*")]


def test_a_second_writer_waits_for_the_first(spark, tmp_path: Path) -> None:
    first, second = spark.range(3), spark.range(5)
    fs = lake_io._Fs(spark, str(tmp_path))
    with lake_io.partition_lease(fs, str(tmp_path), "t", DT):  # a writer in the middle of its write
        writer = threading.Thread(
            target=lake_io.write_partition, args=(spark, second, str(tmp_path), "t", DT)
        )
        writer.start()
        time.sleep(3)
        assert writer.is_alive() and not (tmp_path / "t" / f"dt={DT}").exists()  # it waits
        lake_io.write_partition(spark, first, str(tmp_path), "t", DT, lease=False)  # the holder writes
    writer.join(60)
    assert rows(spark, tmp_path) == [(i,) for i in range(5)]  # then the second writer's whole write
    assert leftovers(tmp_path) == []


def test_concurrent_writers_of_one_partition_all_finish_complete(spark, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            lake_io.write_partition(spark, spark.range(n), str(tmp_path), "t", DT)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (10, 20, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert rows(spark, tmp_path) in ([(i,) for i in range(n)] for n in (10, 20, 30))
    assert leftovers(tmp_path) == []


def test_a_live_holder_past_the_wait_is_a_clear_error(spark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lake_io, "LEASE_WAIT_S", 1.0)
    fs = lake_io._Fs(spark, str(tmp_path))
    busy = pytest.raises(lake_io.PartitionBusy, match=r"t dt=2026-11-24 is being written by pid \d+")
    with lake_io.partition_lease(fs, str(tmp_path), "t", DT), busy:
        lake_io.write_partition(spark, spark.range(2), str(tmp_path), "t", DT)


def test_the_lease_of_a_killed_writer_is_taken_over(spark, tmp_path: Path) -> None:
    import socket

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lease = tmp_path / "t" / "_leases" / f"dt={DT}"
    lease.parent.mkdir(parents=True)
    lease.write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": time.time()})
    )
    lake_io.write_partition(spark, spark.range(2), str(tmp_path), "t", DT)  # no wait: its writer is gone
    assert rows(spark, tmp_path) == [(0,), (1,)] and leftovers(tmp_path) == []


def test_a_crash_between_the_two_renames_puts_the_old_partition_back(spark, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    lake_io.write_partition(spark, spark.range(4), str(tmp_path), "t", DT)
    # the crash: the old partition was renamed to _trash, the new one never renamed into place
    (tmp_path / "t" / "_trash").mkdir()
    (tmp_path / "t" / f"dt={DT}").rename(tmp_path / "t" / "_trash" / f"dt={DT}-crashed")
    # the next writer restores it before writing; even if that write dies, the old partition stands
    broken = spark.range(9).withColumn(
        "id", F.coalesce(F.raise_error(F.lit("executor lost")).cast("long"), "id")
    )
    with pytest.raises(Exception, match="executor lost"):
        lake_io.write_partition(spark, broken, str(tmp_path), "t", DT)
    assert rows(spark, tmp_path) == [(i,) for i in range(4)]
    assert not (tmp_path / "t" / "_leases" / f"dt={DT}").exists()  # released on failure too
