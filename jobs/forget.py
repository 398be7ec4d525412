"""Erase users' or repositories' data from every table of the lake (raw to gold).

    spark-submit --master 'local[*]' jobs/forget.py --user u-123 --repo acme/payments
    echoctl forget --user u-123   # the same, with master and lake from config

Records the request under <lake>/_erasure/requests/ (every later gold build leaves them out), then
rewrites each partition that holds their data (see echo_lib/mining/erasure.py). Rerunning it
finishes a crashed run and changes nothing after a complete one.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--user", action="append", default=[], help="user id to forget (repeatable)")
    parser.add_argument("--repo", action="append", default=[], help="repo id to forget (repeatable)")
    parser.add_argument("--who", default="spark-submit", help="who asked, for the record")
    parser.add_argument("--lake", help="lake URI (default: lake.uri from config)")
    args = parser.parse_args(argv)
    if not args.user and not args.repo:
        parser.error("give --user or --repo")

    from echo_lib.core.config import load_config
    from echo_lib.core.spark import get_session, stage_progress
    from echo_lib.mining.erasure import run_forget
    from echo_lib.ops.submit import say

    cfg = load_config().config
    spark = get_session(cfg, "echo-forget")
    with stage_progress(spark, say):
        result = run_forget(spark, args.lake or cfg.lake_uri, args.user, args.repo, who=args.who)
    print("ECHO_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
