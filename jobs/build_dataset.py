"""Build gold training datasets (sft, preference, kto) from silver refinements.

    spark-submit --master 'local[*]' jobs/build_dataset.py --date 2026-11-24
    spark-submit --master 'local[*]' jobs/build_dataset.py --from 2026-11-20 --to 2026-11-24
    echoctl build-dataset --date 2026-11-24   # the same, with master, lake and settings from config

Reads  <lake>/silver/refinements/dt=D (each date of the window) and the held-out split's code
Writes <lake>/gold/{sft,preference,kto}/dt=D/ and <lake>/gold/_manifests/dt=D/_manifest.json,
and logs the manifest to MLflow as the datasets' lineage.
"""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta


def window(start: str, end: str) -> list[str]:
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if last < first:
        raise SystemExit(f"--to {end} is before --from {start}")
    return [(first + timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--date", help="one partition date YYYY-MM-DD")
    parser.add_argument("--from", dest="start", help="first date of a window")
    parser.add_argument("--to", dest="end", help="last date of a window (the gold partition's date)")
    parser.add_argument("--lake", help="lake URI (default: lake.uri from config)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the manifest to MLflow")
    args = parser.parse_args(argv)
    if bool(args.date) == bool(args.start and args.end):
        parser.error("give --date, or --from and --to")
    dates = [args.date] if args.date else window(args.start, args.end)

    from echo_lib.core.config import load_config
    from echo_lib.core.spark import get_session, stage_progress
    from echo_lib.mining.dataset import run_build
    from echo_lib.ops.submit import say
    from echo_lib.world import corpus

    cfg = load_config().config
    spark = get_session(cfg, f"echo-build-dataset-{dates[-1]}")
    heldout = [f.text for f in corpus.scan(corpus.team_repos(cfg), cfg).select("heldout")]
    with stage_progress(spark, say):
        manifest = run_build(spark, args.lake or cfg.lake_uri, dates, heldout, settings=cfg.dataset, say=say)
    if not args.no_mlflow:
        from echo_lib.mining.dataset import log_manifest

        manifest["mlflow_run_id"] = log_manifest(cfg, manifest)
    print("ECHO_RESULT " + json.dumps(manifest))


if __name__ == "__main__":
    main()
