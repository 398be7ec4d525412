"""Benchmark ingest + mine + build on Spark against a pyarrow floor and DuckDB, side by side.

    .venv/bin/python bench/bench_mining.py --sizes 100000,1000000 [--json]

For each size N it makes one raw partition of N world events (real sessions from the world with
proposals built from the real code, replicated with fresh ids to reach N), then, in one run:

* floor:  pyarrow reads the same JSONL.gz bytes and writes them as Parquet;
* spark:  Echo's ingest, mine and build stages in one SparkSession on ``local[2]``;
* duckdb: the same mining logic (parse, dedupe, link shown/reaction/settled snapshot, outcome,
          levenshtein, write) in DuckDB, single machine.

It reports seconds, events/s, the ratios, the scaling exponent of each engine (slope of
log time on log N), and peak memory: the Python driver, the Spark JVM, Spark's Python workers.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import random
import shutil
import sys
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DAY = "2026-11-24"


class Oracle:
    model_version = "bench-oracle"

    def __init__(self, texts, seed):
        self.texts, self.rng = texts, random.Random(seed)

    def complete(self, prefixes, suffixes=None):
        from echo_lib.agent.engine import Proposal

        out = []
        for prefix, suffix in zip(prefixes, suffixes, strict=True):
            text = next(t for t in self.texts if prefix in t and suffix[:200] in t)
            pos = len(prefix) if text.startswith(prefix) else text.index(prefix) + len(prefix)
            real = text[pos : text.index("\n", pos)]
            kind = self.rng.random()
            proposed = real if kind < 0.2 else real[: len(real) // 2] + "x" if kind < 0.5 else "pass"
            out.append(Proposal(text=proposed, confidence=0.9, shown=True, num_tokens=1))
        return out


def make_partition(lake: Path, n_events: int, seed: int = 0) -> int:
    """Write ``n_events`` (about) into raw/events/dt=DAY; return the exact number of lines."""
    from echo_lib.core.config import load_config
    from echo_lib.world import corpus
    from echo_lib.world.behaviour import BehaviourParams
    from echo_lib.world.delivery import DeliveryParams, arrivals
    from echo_lib.world.simulate import plan_day, run_sessions

    cfg = load_config().config
    files = [f for f in corpus.scan(corpus.team_repos(cfg), cfg).select("experience") if len(f.text) < 60_000]
    specs = plan_day(files, date.fromisoformat(DAY), 120, seed, BehaviourParams(), DeliveryParams())
    results = run_sessions(specs, Oracle([s.text for s in specs], seed), BehaviourParams(), concurrency=32)
    base = [
        e
        for _, e, _ in arrivals(
            [r.events for r in results], DeliveryParams(late_session_rate=0), random.Random(seed)
        )
    ]
    folder = lake / "raw" / "events" / f"dt={DAY}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stream = _replicated(base, n_events)
    part, written = 0, 0
    while chunk := list(itertools.islice(stream, 250_000)):
        with gzip.open(folder / f"part-{part:05d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=6) as out:
            out.writelines(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in chunk)
        part, written = part + 1, written + len(chunk)
    return written


def _replicated(base: list[dict], n_events: int):
    """The base sessions again and again, with fresh ids per copy, until ``n_events``."""
    written, copy = 0, 0
    while True:
        for event in base:
            if written >= n_events:
                return
            e = dict(event)
            if copy:
                for key in ("event_id", "session_id", "request_id"):
                    if key in e:
                        e[key] = f"{e[key]}-c{copy}"
            yield e
            written += 1
        copy += 1


class PeakMemory:
    """Samples RSS of this process, the Spark JVM and Python workers every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = {"driver_python_mb": 0.0, "jvm_mb": 0.0, "python_workers_mb": 0.0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                jvm = workers = 0.0
                for child in self.me.children(recursive=True):
                    rss = child.memory_info().rss / 2**20
                    if "java" in child.name():
                        jvm += rss
                    elif "python" in child.name():
                        workers += rss
                self.peak["jvm_mb"] = max(self.peak["jvm_mb"], jvm)
                self.peak["python_workers_mb"] = max(self.peak["python_workers_mb"], workers)
                self.peak["driver_python_mb"] = max(
                    self.peak["driver_python_mb"], self.me.memory_info().rss / 2**20
                )
            except Exception:  # a process ended between listing and reading
                pass
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def floor(lake: Path, out: Path) -> float:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((lake / "raw" / "events" / f"dt={DAY}").glob("*.jsonl.gz")):
        table = pj.read_json(str(path))
        pq.write_table(table, out / (path.name + ".parquet"))
    return time.perf_counter() - start


DUCKDB_MINING = """
CREATE OR REPLACE TABLE ev AS SELECT * FROM read_json('{raw}/*.jsonl.gz', format='newline_delimited',
  columns={{event_id:'VARCHAR', event_type:'VARCHAR', ts:'TIMESTAMPTZ', seq:'BIGINT', session_id:'VARCHAR',
  user_id:'VARCHAR', repo_id:'VARCHAR', doc_id:'VARCHAR', request_id:'VARCHAR', model_version:'VARCHAR',
  "offset":'BIGINT', prefix:'VARCHAR', suffix:'VARCHAR', proposal:'VARCHAR', confidence:'DOUBLE',
  accepted_len:'BIGINT', reason:'VARCHAR', age_s:'BIGINT', text:'VARCHAR'}}, ignore_errors=true);
CREATE OR REPLACE TABLE u AS SELECT * FROM ev QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY seq) = 1;
COPY (
  WITH shown AS (SELECT * FROM u WHERE event_type = 'completion_shown'
                 QUALIFY row_number() OVER (PARTITION BY session_id, request_id ORDER BY seq) = 1),
  react AS (SELECT session_id, request_id, event_type AS reaction, accepted_len FROM u
            WHERE event_type IN ('completion_accepted', 'completion_rejected')
            QUALIFY row_number() OVER (PARTITION BY session_id, request_id ORDER BY seq) = 1),
  snap AS (SELECT session_id, request_id, text AS final FROM u WHERE event_type = 'region_snapshot' AND age_s >= 30
           QUALIFY row_number() OVER (PARTITION BY session_id, request_id ORDER BY age_s DESC, seq DESC) = 1)
  SELECT s.session_id, s.request_id, s.user_id, s.repo_id, s.doc_id, s.prefix, s.suffix, s.proposal, n.final,
    CASE WHEN r.reaction IS NULL THEN 'abandoned'
         WHEN r.reaction = 'completion_accepted' AND r.accepted_len < length(s.proposal) THEN 'partially_accepted'
         WHEN r.reaction = 'completion_accepted' AND n.final = s.proposal THEN 'accepted_unchanged'
         WHEN r.reaction = 'completion_accepted' THEN 'accepted_then_edited'
         WHEN length(coalesce(n.final, '')) > 0 THEN 'rejected_rewritten' ELSE 'rejected_nothing_kept' END AS outcome,
    levenshtein(s.proposal, n.final) AS edit_distance
  FROM shown s LEFT JOIN react r USING (session_id, request_id) LEFT JOIN snap n USING (session_id, request_id)
) TO '{out}' (FORMAT parquet);
"""


def duckdb_mine(lake: Path, out: Path) -> tuple[float, int]:
    import duckdb

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(DUCKDB_MINING.format(raw=lake / "raw" / "events" / f"dt={DAY}", out=out))
    rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
    return time.perf_counter() - start, rows


def spark_pipeline(spark, lake: Path, steps: bool = False) -> dict[str, float]:
    """Time the three stages; with ``steps``, say (on stderr) when each of the build's funnel steps
    and gold writes finished, in seconds since the build began."""
    from echo_lib.mining.dataset import run_build
    from echo_lib.mining.ingest import run_ingest
    from echo_lib.mining.refinements import run_mine

    times = {}
    start = time.perf_counter()
    ingest = run_ingest(spark, str(lake), DAY)
    times["ingest"] = time.perf_counter() - start
    start = time.perf_counter()
    mined = run_mine(spark, str(lake), DAY)
    times["mine"] = time.perf_counter() - start
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"{time.perf_counter() - start:7.1f} s  {message}", file=sys.stderr, flush=True)

    run_build(spark, str(lake), [DAY], [], say=say if steps else None)
    times["build"] = time.perf_counter() - start
    times["lines"] = ingest["lines_read"]
    times["refinements"] = mined["refinements"]
    return times


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated event counts")
    parser.add_argument("--work", default=str(ROOT / "var" / "bench" / "mining"), help="scratch folder")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="say when each build step finished (stderr), to see where it goes",
    )
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)

    from echo_lib.core.config import load_config
    from echo_lib.core.spark import get_session

    start = time.perf_counter()
    cfg = load_config(overrides={"spark.shuffle_partitions": 8}).config
    spark = get_session(cfg, "echo-bench-mining", master=args.master)
    startup = time.perf_counter() - start
    rows = []
    with PeakMemory() as memory:
        for n in sizes:
            lake = work / f"lake-{n}"
            shutil.rmtree(lake, ignore_errors=True)
            gen = time.perf_counter()
            lines = make_partition(lake, n)
            gen = time.perf_counter() - gen
            t_floor = floor(lake, work / f"floor-{n}")
            t_duck, duck_rows = duckdb_mine(lake, work / f"duck-{n}.parquet")
            t = spark_pipeline(spark, lake, args.steps)
            spark_mine = t["ingest"] + t["mine"]
            rows.append(
                {
                    "events": lines,
                    "generate_s": gen,
                    "floor_s": t_floor,
                    "duckdb_mine_s": t_duck,
                    "duckdb_refinements": duck_rows,
                    "spark_ingest_s": t["ingest"],
                    "spark_mine_s": t["mine"],
                    "spark_build_s": t["build"],
                    "spark_refinements": t["refinements"],
                    "spark_total_s": spark_mine + t["build"],
                    "spark_events_per_s": lines / (spark_mine + t["build"]),
                    "ratio_ingest_mine_to_floor": spark_mine / t_floor,
                    "ratio_ingest_mine_to_duckdb": spark_mine / t_duck,
                    "ratio_total_to_floor": (spark_mine + t["build"]) / t_floor,
                }
            )
            shutil.rmtree(work / f"floor-{n}", ignore_errors=True)
    result = {"sizes": rows, "spark_startup_s": startup, "peak_memory_mb": memory.peak, "master": args.master}
    if len(rows) > 1:
        xs = [r["events"] for r in rows]
        result["scaling_exponent"] = {
            "spark_total": slope(xs, [r["spark_total_s"] for r in rows]),
            "spark_ingest_mine": slope(xs, [r["spark_ingest_s"] + r["spark_mine_s"] for r in rows]),
            "duckdb": slope(xs, [r["duckdb_mine_s"] for r in rows]),
            "floor": slope(xs, [r["floor_s"] for r in rows]),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Spark session start-up: {startup:.1f} s ({args.master})")
    header = (
        "events",
        "floor s",
        "duckdb s",
        "ingest s",
        "mine s",
        "build s",
        "ev/s",
        "(i+m)/floor",
        "(i+m)/duckdb",
    )
    print(("{:>10}" * len(header)).format(*header))
    for r in rows:
        print(
            ("{:>10}" + "{:>10.1f}" * 5 + "{:>10.0f}" + "{:>10.1f}" * 2).format(
                r["events"],
                r["floor_s"],
                r["duckdb_mine_s"],
                r["spark_ingest_s"],
                r["spark_mine_s"],
                r["spark_build_s"],
                r["spark_events_per_s"],
                r["ratio_ingest_mine_to_floor"],
                r["ratio_ingest_mine_to_duckdb"],
            )
        )
    if "scaling_exponent" in result:
        print(
            "scaling exponent (slope of log time on log events):",
            ", ".join(f"{k} {v:.2f}" for k, v in result["scaling_exponent"].items()),
        )
    print(
        "refinements (Spark / DuckDB):",
        ", ".join(f"{r['spark_refinements']:,} / {r['duckdb_refinements']:,}" for r in rows),
    )
    print("peak memory MB:", ", ".join(f"{k} {v:.0f}" for k, v in memory.peak.items()))


if __name__ == "__main__":
    main()
