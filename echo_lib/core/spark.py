"""SparkSession construction shared by jobs, tests and ``echoctl doctor``.

Every setting comes from :class:`~echo_lib.core.config.EchoConfig`; ``spark-submit`` flags given by a
cluster (master, memory) win over the ones set here because ``getOrCreate`` keeps them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from echo_lib.core.config import EchoConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType


def schema(columns: str) -> StructType:
    """A ``StructType`` from ``"name type, name type, ..."`` (Spark's DDL types, nullable), without
    a running session: ``StructType.fromDDL`` asks the JVM. Tables define their schemas with it."""
    from pyspark.sql import types as T

    simple = {
        "string": T.StringType(),
        "long": T.LongType(),
        "int": T.IntegerType(),
        "double": T.DoubleType(),
        "boolean": T.BooleanType(),
        "timestamp": T.TimestampType(),
    }
    fields = []
    for column in columns.split(","):
        name, kind = column.split()
        if kind not in simple:
            raise ValueError(f"unsupported column type {kind!r} in {column.strip()!r}")
        fields.append(T.StructField(name, simple[kind], nullable=True))
    return T.StructType(fields)


def first_per_key(df: DataFrame, keys: list[str], *order, keep: int = 1) -> DataFrame:
    """The first ``keep`` rows of each ``keys`` group in ``order``: Echo's one way to deduplicate
    (keep=1) or cap (keep=N). ``order`` must be total within a group for the result to be stable."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy(*keys).orderBy(*order))
    return df.withColumn("_rank", rank).where(F.col("_rank") <= keep).drop("_rank")


def spark_conf(cfg: EchoConfig) -> dict[str, str]:
    """The Spark settings Echo relies on, plus the user's ``spark.conf`` extras (which win)."""
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
        # INT96 timestamps are deprecated and slow; write plain microseconds.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": cfg.spark.driver_memory,
        "spark.driver.host": cfg.spark.driver_host,
        "spark.ui.showConsoleProgress": "false",
    }
    conf.update(cfg.spark.conf)
    return conf


def get_session(cfg: EchoConfig, app_name: str, *, master: str | None = None) -> SparkSession:
    """Build (or reuse) the process's SparkSession for ``app_name``."""
    # the driver binds (and executors call back) on spark.driver_host
    os.environ["SPARK_LOCAL_IP"] = cfg.spark.driver_host
    # Python workers must run the interpreter that has Echo's packages (a cluster sets its own).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit the master is already set; only choose one when running in-process.
    if master or not os.environ.get("SPARK_ENV_LOADED"):
        builder = builder.master(master or cfg.spark.master)
    for key, value in spark_conf(cfg).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


@contextmanager
def stage_progress(spark: SparkSession, say: Callable[[str], None], every_s: float = 5.0) -> Iterator[None]:
    """While the block runs, say each active Spark stage's name and tasks done, at most every
    ``every_s`` seconds and only when something moved (the console progress bar is off: it draws
    over logs)."""
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    last: dict[int, int] = {}

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                for stage_id in tracker.getActiveStageIds():
                    info = tracker.getStageInfo(stage_id)
                    if info is None or last.get(stage_id) == info.numCompletedTasks:
                        continue
                    last[stage_id] = info.numCompletedTasks
                    say(
                        f"spark stage {stage_id} ({info.name}): {info.numCompletedTasks}/{info.numTasks} tasks"
                    )
            except Exception:  # the context is stopping; progress is best effort
                return

    thread = threading.Thread(target=poll, name="echo-stage-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 1)
