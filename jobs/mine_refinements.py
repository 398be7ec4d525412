"""Mine one day of bronze events into silver refinements (one row per shown proposal).

    spark-submit --master 'local[*]' jobs/mine_refinements.py --date 2026-11-24
    echoctl mine --date 2026-11-24            # the same, with master and lake from config

Reads  <lake>/bronze/events/dt={D-1,D,D+1} (lookback rule: sessions first seen on D)
Writes <lake>/silver/refinements/dt=D/ (+ _manifest.json) and <lake>/quarantine/orphans/dt=D/
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--date", required=True, help="partition date YYYY-MM-DD")
    parser.add_argument("--lake", help="lake URI (default: lake.uri from config)")
    parser.add_argument(
        "--settle-s", type=int, default=30, help="youngest snapshot age that counts as settled"
    )
    parser.add_argument(
        "--if-present",
        action="store_true",
        help="succeed without writing when the date has no bronze partition (the nightly re-mine of D-1)",
    )
    args = parser.parse_args(argv)

    from echo_lib.core import lake as lake_io
    from echo_lib.core.config import load_config
    from echo_lib.core.spark import get_session, stage_progress
    from echo_lib.mining.refinements import run_mine
    from echo_lib.ops.submit import say

    cfg = load_config().config
    lake = args.lake or cfg.lake_uri
    spark = get_session(cfg, f"echo-mine-{args.date}")
    if args.if_present and not lake_io.is_complete(spark, lake, "bronze/events", args.date):
        print("ECHO_RESULT " + json.dumps({"dt": args.date, "skipped": "no bronze partition"}))
        return
    with stage_progress(spark, say):
        # dataset.harvest=raw (a naive baseline) keeps the text as it first arrived
        as_arrived = cfg.dataset.harvest == "raw"
        manifest = run_mine(spark, lake, args.date, settle_s=args.settle_s, as_arrived=as_arrived)
    say(
        f"mine {args.date}: {manifest['events']:,} events in {manifest['sessions']:,} sessions -> "
        f"{manifest['refinements']:,} refinements, {sum(manifest['orphans'].values()):,} orphans quarantined"
    )
    print("ECHO_RESULT " + json.dumps(manifest))


if __name__ == "__main__":
    main()
