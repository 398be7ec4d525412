"""How long the lake keeps users' text: raw, bronze, silver and quarantine partitions older than
``lake.raw_text_days`` are deleted; gold (scrubbed, and subject to ``echoctl forget``) stays.

Age counts from a logical date (the nightly's ``ds``), not from the wall clock, so a backfill
expires the same partitions as the nightly of that day did. Each partition leaves the lake the way
the atomic swap brings one in: renamed out of place first (a reader sees it whole or not at
all), then deleted, so a crash half way leaves only debris that the next run deletes.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

#: the tables that hold users' text as it arrived (gold holds it scrubbed)
RAW_TEXT_TABLES = (
    "raw/events",
    "bronze/events",
    "quarantine/events",
    "silver/refinements",
    "quarantine/orphans",
    "quarantine/imports",  # source lines of other clients' logs that did not map
)


def expired_dates(dates: list[str], as_of: str, days: int) -> list[str]:
    """The dates older than the ``days`` that end at ``as_of`` (``days`` 0 keeps everything)."""
    if days == 0:
        return []
    oldest_kept = date.fromisoformat(as_of) - timedelta(days=days - 1)
    return sorted(d for d in dates if date.fromisoformat(d) < oldest_kept)


def expire_raw_text(lake: str, as_of: str, days: int) -> dict[str, list[str]]:
    """Delete the raw-text partitions that ``days`` of retention no longer allow at ``as_of``;
    return the deleted dates per table."""
    import pyarrow.fs as pafs

    from echo_lib.core.lake import arrow_fs, listed_dates

    fs, root = arrow_fs(lake)
    deleted: dict[str, list[str]] = {}
    for table in RAW_TEXT_TABLES:
        base = f"{root}/{table}"
        trash = f"{base}/_trash"
        for info in fs.get_file_info(pafs.FileSelector(trash, allow_not_found=True)):
            if info.base_name.startswith("expired-"):  # a crashed expiry's debris
                fs.delete_dir(info.path)
        for dt in expired_dates(listed_dates(lake, table), as_of, days):
            if fs.get_file_info(f"{base}/_leases/dt={dt}").type != pafs.FileType.NotFound:
                continue  # a writer (a backfill of an old day) holds it: the next run expires it
            fs.create_dir(trash, recursive=True)
            gone = f"{trash}/expired-dt={dt}-{uuid.uuid4().hex[:12]}"
            fs.move(f"{base}/dt={dt}", gone)
            fs.delete_dir(gone)
            deleted.setdefault(table, []).append(dt)
    return deleted


def newest_raw_date(lake: str) -> str | None:
    """The newest day the collector has landed: the default ``as_of`` outside Airflow."""
    from echo_lib.core.lake import listed_dates

    return max(listed_dates(lake, "raw/events"), default=None)


def summary(result: dict) -> str:
    """One line for a log or a terminal: what ``expire_raw_text`` deleted and by which rule."""
    gone = "; ".join(f"{table} {', '.join(dates)}" for table, dates in result["deleted"].items()) or "nothing"
    return f"raw text kept {result['days'] or 'unlimited'} day(s) back from {result['as_of']}: deleted {gone}"
