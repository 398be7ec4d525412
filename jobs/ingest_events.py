"""Ingest one day of raw telemetry: validate, quarantine, deduplicate, write bronze.

    spark-submit --master 'local[*]' jobs/ingest_events.py --date 2026-11-24
    echoctl ingest --date 2026-11-24          # the same, with master and lake from config

Reads  <lake>/raw/events/dt=D/*.jsonl.gz
Writes <lake>/bronze/events/dt=D/ (+ _manifest.json) and <lake>/quarantine/events/dt=D/
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
    args = parser.parse_args(argv)

    from echo_lib.core.config import load_config
    from echo_lib.core.spark import get_session, stage_progress
    from echo_lib.mining.ingest import Limits, run_ingest
    from echo_lib.ops.submit import say

    cfg = load_config().config
    spark = get_session(cfg, f"echo-ingest-{args.date}")
    limits = Limits(cfg.ingest.max_line_bytes, cfg.ingest.max_file_bytes)
    with stage_progress(spark, say):
        manifest = run_ingest(spark, args.lake or cfg.lake_uri, args.date, limits)
    say(
        f"ingest {args.date}: {manifest['lines_read']:,} lines read = {manifest['valid']:,} valid + "
        f"{manifest['quarantined']:,} quarantined; {manifest['written']:,} events written to bronze"
    )
    print("ECHO_RESULT " + json.dumps(manifest))


if __name__ == "__main__":
    main()
