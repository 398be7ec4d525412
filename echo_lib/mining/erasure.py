"""``echoctl forget``: erase users' (or repositories') data from every table of the lake.

A request is recorded first (``<lake>/_erasure/requests/<time>-<id>.json``), so that every later
gold build leaves those users and repos out even if this job dies half way. Then, every partition
that holds their data is rewritten without it, each by the lake's atomic swap:

1. gold (``sft``, ``preference``, ``kto``): rows of their requests, and the partition's manifest
   updated (row counts, content hashes, the erasure) so it still vouches for what is there;
2. silver refinements and ``quarantine/orphans`` (the orphans of their sessions);
3. bronze events;
4. ``quarantine/events``: bad lines that mention one of the ids;
5. raw telemetry: their lines (and unreadable lines that mention one of the ids).

The order makes a rerun finish a crashed one: each step finds what to remove from the tables the
later steps have not rewritten yet (gold's requests from silver and bronze, and so on), and a
partition that holds nothing of theirs is left as it is. Model versions trained on a rewritten gold
date are reported (their tags carry the gold dates): the data is gone from the lake, not from
their weights.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

REQUESTS = "_erasure/requests"


def record_request(lake: str, users: list[str], repos: list[str], who: str) -> dict[str, Any]:
    """Append one erasure request to the lake's register (one file per request)."""
    from echo_lib.core import lake as lake_io

    request = {
        "users": sorted(users),
        "repos": sorted(repos),
        "requested_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": who,
    }
    name = f"{REQUESTS}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    lake_io.write_bytes_atomic(lake, name, json.dumps(request, sort_keys=True).encode())
    return request


def forgotten(lake: str) -> tuple[list[str], list[str]]:
    """(users, repos) of every recorded erasure request: no gold build may include them."""
    import pyarrow.fs as pafs

    from echo_lib.core.lake import arrow_fs

    fs, root = arrow_fs(lake)
    users: set[str] = set()
    repos: set[str] = set()
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/{REQUESTS}", allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
            with fs.open_input_stream(info.path) as stream:
                request = json.loads(stream.read())
            users.update(request["users"])
            repos.update(request["repos"])
    return sorted(users), sorted(repos)


def mentions(column: str, ids: list[str]) -> Column:
    """Rows whose ``column`` holds one of ``ids`` as text (unparsed lines)."""
    from functools import reduce

    from pyspark.sql import functions as F

    text = F.coalesce(F.col(column), F.lit(""))
    return reduce(lambda a, b: a | b, (text.contains(i) for i in ids), F.lit(False))


def raw_lines_kept(data: bytes, users: set[str], repos: set[str]) -> tuple[bytes | None, int]:
    """A raw file without the lines of ``users``/``repos``: (new gzip bytes or None if nothing
    changes, lines removed). A line that is not a JSON object is removed if it mentions an id."""
    import gzip

    from echo_lib.mining.ingest import Limits, gzip_lines

    kept, removed = [], 0
    ids = [i.encode() for i in (*users, *repos)]
    for _, line, problem in gzip_lines(data, Limits()):
        if problem is not None and problem.reason in ("oversize_file",):
            return None, 0  # a file over the read budget is not rewritten blind
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            drop = event.get("user_id") in users or event.get("repo_id") in repos
        else:
            drop = any(i in line for i in ids)
        if drop:
            removed += 1
        else:
            kept.append(line)
    if not removed:
        return None, 0
    return gzip.compress(b"".join(line + b"\n" for line in kept if line.strip()), mtime=0), removed


def run_forget(
    spark: SparkSession, lake: str, users: list[str], repos: list[str], *, who: str
) -> dict[str, Any]:
    """Record the request, then rewrite every partition holding the users' or repos' data."""

    from echo_lib.core import lake as lake_io
    from echo_lib.mining.dataset import (
        GOLD_SCHEMAS,
        of_users_or_repos,
        opt_out,
        write_gold_manifest,
        write_gold_table,
    )

    if not users and not repos:
        raise ValueError("name at least one user or repo to forget")
    request = record_request(lake, users, repos, who)
    removed: dict[str, int] = {}
    gold_dates: list[str] = []

    def table(name: str) -> list[tuple[str, DataFrame]]:
        return [
            (dt, spark.read.parquet(lake_io.partition_uri(lake, name, dt)))
            for dt in lake_io.partition_dates(spark, lake, name)
        ]

    def rewrite(name: str, dt: str, frame: DataFrame, keep: DataFrame, **write) -> int:
        gone = frame.count() - keep.count()
        if gone:
            manifest = lake_io.read_partition_manifest(spark, lake, name, dt)
            if manifest is not None:
                manifest.setdefault("erased_rows", 0)
                manifest["erased_rows"] += gone
            lake_io.write_partition(spark, keep, lake, name, dt, manifest=manifest, **write)
            removed[name] = removed.get(name, 0) + gone
        return gone

    # what to remove, found in the tables not yet rewritten: their requests and sessions, computed
    # now (checkpointed) because the tables they come from are rewritten below
    keyed = [f for _, f in table("silver/refinements")] + [f for _, f in table("bronze/events")]
    if keyed:
        from functools import reduce

        mine = reduce(
            lambda a, b: a.unionByName(b),
            (f.where(of_users_or_repos(users, repos)).select("request_id", "session_id") for f in keyed),
        ).distinct()
    else:
        mine = spark.createDataFrame([], "request_id string, session_id string")
    requests = mine.where("request_id IS NOT NULL").select("request_id").distinct().localCheckpoint()
    sessions = mine.select("session_id").distinct().localCheckpoint()

    # 1. gold, with each manifest made to vouch for what is left (tables and manifest commit together)
    for dt in lake_io.partition_dates(spark, lake, "gold/_manifests"):
        with lake_io.holding(spark, lake, "gold/_manifests", dt):
            manifest = lake_io.read_partition_manifest(spark, lake, "gold/_manifests", dt)
            changed = False
            for name in GOLD_SCHEMAS:
                if not lake_io.is_complete(spark, lake, f"gold/{name}", dt):
                    continue
                frame = spark.read.parquet(lake_io.partition_uri(lake, f"gold/{name}", dt))
                keep = frame.join(requests, "request_id", "left_anti").localCheckpoint()
                gone = frame.count() - keep.count()
                if gone:
                    before = lake_io.read_partition_manifest(spark, lake, f"gold/{name}", dt) or {}
                    erased = int(before.get("erased_rows", 0)) + gone
                    entry = write_gold_table(spark, lake, name, dt, keep, erased_rows=erased)
                    manifest["datasets"][name].update(entry)
                    removed[f"gold/{name}"] = removed.get(f"gold/{name}", 0) + gone
                    changed = True
            if changed:
                gold_dates.append(dt)
                manifest.setdefault("erasures", []).append(request)
                write_gold_manifest(spark, lake, dt, manifest, lease=False)
    # 2. silver and the orphans of their sessions
    for dt, frame in table("silver/refinements"):
        rewrite(
            "silver/refinements",
            dt,
            frame,
            opt_out(frame, users=users, repos=repos),
            sort_within=["session_id", "shown_ts"],
        )
    for dt, frame in table("quarantine/orphans"):
        rewrite("quarantine/orphans", dt, frame, frame.join(sessions, "session_id", "left_anti"), files=1)
    # 3. bronze
    for dt, frame in table("bronze/events"):
        rewrite(
            "bronze/events",
            dt,
            frame,
            opt_out(frame, users=users, repos=repos),
            sort_within=["session_id", "seq"],
        )
    # 4. quarantined lines that mention them
    ids = [*users, *repos]
    for dt, frame in table("quarantine/events"):
        rewrite("quarantine/events", dt, frame, frame.where(~mentions("raw", ids)), files=1)
    # 5. raw telemetry, file by file
    removed["raw/events"] = _forget_raw(lake, set(users), set(repos))
    return {"request": request, "removed_rows": removed, "gold_dates": gold_dates}


def _forget_raw(lake: str, users: set[str], repos: set[str]) -> int:
    import pyarrow.fs as pafs

    from echo_lib.core.lake import arrow_fs, write_bytes_atomic

    fs, root = arrow_fs(lake)
    selector = pafs.FileSelector(f"{root}/raw/events", recursive=True, allow_not_found=True)
    total = 0
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".jsonl.gz"):
            continue
        with fs.open_input_stream(info.path, compression=None) as stream:  # the gzip bytes as stored
            data, removed = raw_lines_kept(stream.read(), users, repos)
        if data is not None:
            write_bytes_atomic(lake, info.path[len(root) + 1 :], data)
            total += removed
    return total
