"""The nightly's Spark jobs on the 2-worker standalone cluster beside ``local[2]``, same day.

    .venv/bin/python bench/bench_cluster.py --events 100000 [--repeats 2] [--json]

It starts ``echoctl cluster up``'s topology (recording each component's start-up time), makes one
raw partition of N world events (``bench_mining.make_partition``), then submits the nightly's
jobs (ingest, mine, build-dataset) with ``spark-submit`` exactly as the DAG's tasks do, alternating
the two masters on copies of the same raw data. Both run on this machine's cores: the cluster's
executors are 2 workers x 1 core, ``local[2]`` runs the same 2 cores in the driver's JVM, so the
ratio is the cost of the cluster's moving parts (executor start, shuffle over the network), not a
speed-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DAY = "2026-11-24"
JOBS = (
    ("ingest_events", ["--date", DAY]),
    ("mine_refinements", ["--date", DAY]),
    ("build_dataset", ["--date", DAY]),
)


def nightly_seconds(cfg) -> dict[str, float]:
    from echo_lib.ops.submit import run_job

    times = {}
    for job, args in JOBS:
        began = time.perf_counter()
        run_job(cfg, job, args, log_name=f"bench-{job}")
        times[job] = time.perf_counter() - began
    times["total"] = sum(times.values())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from bench_mining import make_partition

    from echo_lib.core.config import load_config, with_overrides
    from echo_lib.ops import cluster

    root = Path(tempfile.mkdtemp(prefix="echo-bench-cluster-"))
    cfg = load_config(overrides={"var_dir": str(root / "var")}).config
    try:
        state = cluster.up(cfg, workers=2, say=lambda m: print(m, file=sys.stderr))
        raw = root / "raw-lake"
        events = make_partition(raw, args.events)
        runs: dict[str, list[dict[str, float]]] = {"cluster": [], "local[2]": []}
        for repeat in range(args.repeats):
            for name in runs:
                lake = (
                    root / f"lake-{name.replace('[', '').replace(']', '')}-{repeat}"
                )  # no glob characters in a Hadoop path
                shutil.copytree(raw / "raw", lake / "raw")
                if name == "cluster":
                    run_cfg = with_overrides(cluster.effective(cfg), {"lake.uri": str(lake)})
                else:
                    run_cfg = with_overrides(cfg, {"lake.uri": str(lake), "spark.master": "local[2]"})
                runs[name].append(nightly_seconds(run_cfg))
                print(f"{name} run {repeat + 1}: {runs[name][-1]['total']:.1f} s", file=sys.stderr)
        result = {
            "events": events,
            "startup_s": state["seconds"],
            "runs": runs,
            "ratio_cluster_over_local_min_total": min(r["total"] for r in runs["cluster"])
            / min(r["total"] for r in runs["local[2]"]),
        }
    finally:
        cluster.down(cfg)
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    print(f"start-up: {', '.join(f'{k} {v:.1f} s' for k, v in result['startup_s'].items())}")
    print(f"{events:,} events; seconds per job, min of {args.repeats}:")
    print("| master | " + " | ".join(j for j, _ in JOBS) + " | total |")
    print("| --- | " + " | ".join("---:" for _ in JOBS) + " | ---: |")
    for name, rows in runs.items():
        cells = [f"{min(r[j] for r in rows):.1f}" for j, _ in JOBS] + [f"{min(r['total'] for r in rows):.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"cluster / local[2] (total, min): {result['ratio_cluster_over_local_min_total']:.2f}x")


if __name__ == "__main__":
    main()
