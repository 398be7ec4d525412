"""The world's speed with the textbook Levenshtein (pure Python, what the world used until
2026-11-30) against rapidfuzz's, side by side in one process on the same sessions.

    PYTHONPATH=. .venv/bin/python bench/bench_world.py --model DIR --sessions 40 --repeats 2

The engine is the configured one (``load_engine``: prefix cache, drafts), loaded afresh for each run. Each
repeat runs both variants (order alternating); the best of the repeats is kept. Both variants must
produce identical events (similarity values are the same), else the script exits non-zero. Also
reported: how many similarity calls a run makes and the seconds spent inside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date


def textbook_similarity(a: str, b: str) -> float:
    """1 - normalised Levenshtein distance, by the O(nm) dynamic programme."""
    if a == b:
        return 1.0
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model directory (a trained model)")
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from echo_lib.core.config import load_config
    from echo_lib.world import behaviour as behaviour_module
    from echo_lib.world.delivery import DeliveryParams
    from echo_lib.world.runner import load_engine, world_files
    from echo_lib.world.simulate import plan_day, run_sessions

    cfg = load_config().config
    params = behaviour_module.BehaviourParams()
    specs = plan_day(
        world_files(cfg, "experience"),
        date(2000, 1, 1),
        args.sessions,
        args.seed,
        params,
        DeliveryParams.none(),
    )
    variants = {"textbook": textbook_similarity, "rapidfuzz": behaviour_module.similarity}
    best: dict[str, dict] = {}
    events_of: dict[str, list] = {}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            calls, inside = [0], [0.0]

            def timed(a: str, b: str, fn=variants[name], calls=calls, inside=inside) -> float:
                start = time.perf_counter()
                value = fn(a, b)
                inside[0] += time.perf_counter() - start
                calls[0] += 1
                return value

            engine = load_engine(cfg, args.model)  # a fresh prefix cache for every run
            behaviour_module.similarity = timed
            try:
                start = time.perf_counter()
                results = run_sessions(specs, engine, params, concurrency=cfg.world.concurrency)
                seconds = time.perf_counter() - start
            finally:
                behaviour_module.similarity = variants["rapidfuzz"]
            events = [e for r in results for e in r.events]
            events_of.setdefault(name, events)
            row = {
                "seconds": round(seconds, 2),
                "events": len(events),
                "events_per_s": round(len(events) / seconds, 1),
                "similarity_calls": calls[0],
                "similarity_seconds": round(inside[0], 3),
            }
            if name not in best or row["seconds"] < best[name]["seconds"]:
                best[name] = row
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {row}", file=sys.stderr)
    same = events_of["textbook"] == events_of["rapidfuzz"]
    result = {
        "sessions": args.sessions,
        "model": args.model,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "identical_events": same,
        "variants": best,
        "events_per_s_ratio": round(best["rapidfuzz"]["events_per_s"] / best["textbook"]["events_per_s"], 3),
        "similarity_time_ratio": round(
            best["textbook"]["similarity_seconds"] / max(best["rapidfuzz"]["similarity_seconds"], 1e-9), 1
        ),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print("| similarity | seconds | events | events/s | similarity calls | seconds inside similarity |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, row in best.items():
            print(
                f"| {name} | {row['seconds']} | {row['events']:,} | {row['events_per_s']} | "
                f"{row['similarity_calls']:,} | {row['similarity_seconds']} |"
            )
        print(
            f"\nworld events/s, rapidfuzz / textbook: {result['events_per_s_ratio']}x; time inside "
            f"similarity: {result['similarity_time_ratio']}x less; identical events: {same}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
