"""SparkSession construction shared by jobs, tests and ``echoctl doctor``.

Every setting comes from :class:`~echo_lib.config.EchoConfig`; ``spark-submit`` flags given by a
cluster (master, memory) win over the ones set here because ``getOrCreate`` keeps them.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from echo_lib.config import EchoConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


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
        "spark.ui.showConsoleProgress": "false",
    }
    conf.update(cfg.spark.conf)
    return conf


def get_session(cfg: EchoConfig, app_name: str, *, master: str | None = None) -> SparkSession:
    """Build (or reuse) the process's SparkSession for ``app_name``."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
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
