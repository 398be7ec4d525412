"""kill -9 in the middle of each Spark job (ingest, mine, build), at each point of the partition
swap, then rerun: the outputs are identical to a run that never crashed, and no debris is left.
(Training's kill -9 is in tests/test_refine.py, an Airflow retry's in tests/test_airflow.py.)"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_mining import world_day

DAY = "2026-11-24"
TABLES = (
    "bronze/events",
    "quarantine/events",
    "silver/refinements",
    "quarantine/orphans",
    "gold/sft",
    "gold/preference",
    "gold/kto",
)

# One job in a process of its own that SIGKILLs itself at one point of one table's swap:
# "before_swap" (staging written, lease held), "between_renames" (the old partition moved to
# _trash, the new one not yet in place) or "after_swap" (for gold: a table swapped, the manifest
# still the old one).
DYING_PIPELINE = """
import os, signal, sys
from echo_lib.core import lake as lake_io
from echo_lib.core.config import load_config
from echo_lib.core.spark import get_session
from echo_lib.mining.dataset import run_build
from echo_lib.mining.ingest import run_ingest
from echo_lib.mining.refinements import run_mine

lake, day, job, table, when = sys.argv[1:6]
final = f"{table}/dt={day}"
rename = lake_io._Fs.rename

def dying_rename(self, src, dst):
    into_place, out_of_place = dst.endswith(final), src.endswith(final)
    if when == "before_swap" and into_place:
        os.kill(os.getpid(), signal.SIGKILL)
    rename(self, src, dst)
    if (when == "between_renames" and out_of_place) or (when == "after_swap" and into_place):
        os.kill(os.getpid(), signal.SIGKILL)

lake_io._Fs.rename = dying_rename
cfg = load_config(overrides={"spark.shuffle_partitions": 2}).config
spark = get_session(cfg, "echo-dying", master="local[1]")
{"ingest": lambda: run_ingest(spark, lake, day), "mine": lambda: run_mine(spark, lake, day),
 "build": lambda: run_build(spark, lake, [day], [])}[job]()
print("survived")
"""


JOBS = ("ingest", "mine", "build")


def pipeline(spark, lake: Path, first: str = "ingest") -> None:
    """The jobs from ``first`` on, as the nightly (or its retry of the failed task) runs them."""
    from echo_lib.mining.dataset import run_build
    from echo_lib.mining.ingest import run_ingest
    from echo_lib.mining.refinements import run_mine

    steps = {
        "ingest": lambda: run_ingest(spark, str(lake), DAY),
        "mine": lambda: run_mine(spark, str(lake), DAY),
        "build": lambda: run_build(spark, str(lake), [DAY], []),
    }
    for job in JOBS[JOBS.index(first) :]:
        steps[job]()


def hashes(spark, lake: Path) -> dict[str, object]:
    from echo_lib.core.lake import read_manifest
    from echo_lib.mining.dataset import content_hash

    out: dict[str, object] = {  # a source file's path names the lake: leave it out
        t: content_hash(spark.read.parquet(str(lake / t / f"dt={DAY}")).drop("_source_file", "source_file"))[
            0
        ]
        for t in TABLES
    }
    manifest = read_manifest(str(lake), DAY)  # its text names the lake's path: compare what it vouches for
    out["gold/_manifests"] = (manifest["funnel"], {k: d["sha256"] for k, d in manifest["datasets"].items()})
    return out


def debris(lake: Path) -> list[str]:
    return sorted(
        str(p.relative_to(lake))
        for folder in ("_staging", "_trash", "_leases", "_scratch")
        for p in lake.rglob(f"{folder}/*")
    )


@pytest.fixture(scope="module")
def clean(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Raw telemetry of a world day, and the outputs of a run that never crashed."""
    lake = tmp_path_factory.mktemp("clean")
    world_day(lake, seed=11, sessions=10)
    pipeline(spark, lake)
    return lake, hashes(spark, lake)


@pytest.mark.parametrize(
    ("job", "table", "when", "fresh"),
    [
        ("ingest", "bronze/events", "before_swap", True),  # ingest dies on the first night
        ("mine", "silver/refinements", "between_renames", False),  # a rerun of mine dies mid-swap
        ("build", "gold/preference", "after_swap", False),  # a rebuild dies between gold's tables
    ],
)
def test_kill_9_then_rerun_gives_the_clean_outputs(
    spark, clean, tmp_path: Path, job: str, table: str, when: str, fresh: bool
) -> None:
    source, expected = clean
    lake = tmp_path / "lake"
    if fresh:
        shutil.copytree(source / "raw", lake / "raw")
    else:
        shutil.copytree(source, lake)
    proc = subprocess.run(
        [sys.executable, "-c", DYING_PIPELINE, str(lake), DAY, job, table, when],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert debris(lake), "the kill left nothing to recover from"

    pipeline(spark, lake, job)  # the rerun: takes over the dead writer's lease, cleans, restores, rewrites

    assert hashes(spark, lake) == expected
    assert debris(lake) == []
