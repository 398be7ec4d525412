"""Bronze events -> silver refinements: one row per shown proposal.

For every ``completion_shown`` the miner finds the user's reaction and the code that settled where
the proposal went: the latest ``region_snapshot`` taken at or after the settle window, or, when no
such snapshot arrived, the region rebuilt by replaying the session's ``doc_change`` events (the
only step that needs Python: an Arrow-based ``applyInPandas`` over just those sessions).

Lookback rule for late data: a session belongs to the date of the first bronze partition it
appears in. Mining date D reads bronze D-1, D and D+1 (those that exist), deduplicates by
``event_id`` across them, and keeps the sessions first seen in D, with all their events. A day is
therefore complete once D+1 has been ingested; the nightly run for D+1 re-mines D.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from echo_lib.core.spark import first_per_key, schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SETTLE_S = 30  # snapshots younger than this may catch the user mid-edit (Zed settles after 10 s)
OUTCOMES = (
    "accepted_unchanged",
    "accepted_then_edited",
    "partially_accepted",
    "rejected_rewritten",
    "rejected_nothing_kept",
    "abandoned",
    # the reaction is known but not what the user kept: no settled snapshot, and no replay (the
    # session logs no edits, as in Continue and Tabby imports, or its edits straddle the window)
    "accepted_unsettled",
    "rejected_unsettled",
)
# what the acceptance metric counts as accepted (the user took the proposal, whole or in part,
# edited or not): labels that train on outcomes must agree with it
ACCEPTED_OUTCOMES = ("accepted_unchanged", "accepted_then_edited", "partially_accepted", "accepted_unsettled")
SESSION_KEY = ["session_id", "request_id"]


def lookback_dates(dt: str) -> list[str]:
    day = date.fromisoformat(dt)
    return [(day + timedelta(days=k)).isoformat() for k in (-1, 0, 1)]


def scope_sessions(events: DataFrame, dt: str) -> DataFrame:
    """Events (with a ``dt`` column) -> deduplicated events of the sessions first seen on ``dt``."""
    from pyspark.sql import functions as F

    unique = first_per_key(events, ["event_id"], "dt", "_source_file", "_line_no")
    first_seen = unique.groupBy("session_id").agg(F.min("dt").alias("_first_dt"))
    return unique.join(first_seen.where(F.col("_first_dt") == dt), "session_id").drop("_first_dt")


def link(
    events: DataFrame, *, settle_s: int = SETTLE_S, as_arrived: bool = False
) -> tuple[DataFrame, DataFrame]:
    """(refinements without replayed finals, orphans). Pure DataFrame -> DataFrame.

    ``as_arrived`` takes the *first* snapshot instead of the settled one: the text as a naive
    harvester of raw logs would keep it, mid-edit trial and error included (a flywheel baseline)."""
    from pyspark.sql import functions as F

    shown = first_per_key(events.where(F.col("event_type") == "completion_shown"), SESSION_KEY, "seq").select(
        "session_id",
        "request_id",
        "user_id",
        "repo_id",
        "doc_id",
        "model_version",
        "trigger",
        "offset",
        "prefix",
        "suffix",
        "proposal",
        "confidence",
        "latency_ms",
        F.col("ts").alias("shown_ts"),
        F.col("seq").alias("shown_seq"),
        F.col("event_id").alias("shown_event_id"),
    )
    reaction_events = events.where(F.col("event_type").isin("completion_accepted", "completion_rejected"))
    reactions = first_per_key(reaction_events, SESSION_KEY, "seq").select(
        *SESSION_KEY,
        F.when(F.col("event_type") == "completion_accepted", "accepted")
        .otherwise("rejected")
        .alias("reaction"),
        "accepted_len",
        F.col("reason").alias("reject_reason"),
        F.col("ts").alias("reaction_ts"),
        F.col("event_id").alias("reaction_event_id"),
    )
    conflicting = (
        reaction_events.groupBy(*SESSION_KEY)
        .agg(F.countDistinct("event_type").alias("kinds"))
        .where("kinds > 1")
    )
    order = [F.col("age_s"), F.col("seq")]
    age, seq = [c.asc() for c in order] if as_arrived else [c.desc() for c in order]
    snapshots = first_per_key(
        events.where(
            (F.col("event_type") == "region_snapshot") & (F.col("age_s") >= (0 if as_arrived else settle_s))
        ),
        SESSION_KEY,
        age,
        seq,
    ).select(
        *SESSION_KEY,
        F.col("text").alias("snapshot_text"),
        F.col("age_s").alias("snapshot_age_s"),
        F.col("event_id").alias("snapshot_event_id"),
    )

    linked = shown.join(reactions, SESSION_KEY, "left").join(snapshots, SESSION_KEY, "left")
    shown_keys = shown.select(*SESSION_KEY)
    orphans = (
        reaction_events.join(shown_keys, SESSION_KEY, "left_anti")
        .select(
            "event_id", "event_type", *SESSION_KEY, "seq", F.lit("reaction_without_shown").alias("reason")
        )
        .unionByName(
            events.where(F.col("event_type") == "region_snapshot")
            .join(shown_keys, SESSION_KEY, "left_anti")
            .select(
                "event_id", "event_type", *SESSION_KEY, "seq", F.lit("snapshot_without_shown").alias("reason")
            )
        )
        .unionByName(
            reaction_events.join(conflicting.select(*SESSION_KEY), SESSION_KEY).select(
                "event_id", "event_type", *SESSION_KEY, "seq", F.lit("conflicting_reactions").alias("reason")
            )
        )
    )
    return linked, orphans


def classify(linked: DataFrame) -> DataFrame:
    """Add the outcome class, edit distance and similarity (Spark built-ins only)."""
    from pyspark.sql import functions as F

    proposal_len = F.length("proposal")
    final = F.col("final")
    accepted = F.col("reaction") == "accepted"
    outcome = (
        F.when(F.col("reaction").isNull(), "abandoned")
        .when(accepted & (F.col("accepted_len") < proposal_len), "partially_accepted")
        .when(accepted & final.isNull(), "accepted_unsettled")
        .when(accepted & (final == F.col("proposal")), "accepted_unchanged")
        .when(accepted, "accepted_then_edited")
        .when(final.isNull(), "rejected_unsettled")
        .when(F.length(final) > 0, "rejected_rewritten")
        .otherwise("rejected_nothing_kept")
    )
    distance = F.levenshtein("proposal", final)
    longest = F.greatest(proposal_len, F.length(final), F.lit(1))
    return linked.withColumns(
        {
            "outcome": outcome,
            "edit_distance": distance,
            "similarity": F.lit(1.0) - distance / longest,
            "time_to_react_ms": (F.col("reaction_ts").cast("double") - F.col("shown_ts").cast("double"))
            * 1000,
        }
    )


REPLAY_SCHEMA = "session_id string, request_id string, replayed_final string"


def replay_regions(group: pd.DataFrame) -> pd.DataFrame:
    """applyInPandas body: one session's shown + doc_change events -> the settled region of each
    shown proposal that lacks a snapshot. The window around the cursor is ``prefix + suffix``."""
    group = group.sort_values("seq", kind="stable")
    changes = group[group["event_type"] == "doc_change"]
    out = []
    for shown in group[(group["event_type"] == "completion_shown") & group["needs_replay"]].itertuples():
        base = shown.offset - len(shown.prefix)
        window = shown.prefix + shown.suffix
        start = len(shown.prefix)  # region start, relative to the window
        ok = True
        for change in changes[changes["seq"] > shown.seq].itertuples():
            rel = change.offset - base
            removed, inserted = int(change.removed_len), change.inserted or ""
            # typing at the region's start is in the region, even when the region starts the window
            # (a proposal at the top of a file has an empty prefix); a whole new line typed there
            # is a line above it
            at_region_start = rel == 0 and removed == 0 and start == 0 and not inserted.endswith("\n")
            if rel + removed <= 0 and not at_region_start:  # entirely before the window: it shifts
                base += len(inserted) - removed
                continue
            if rel < 0 or rel > len(window):  # straddles the window's start, or beyond its end
                ok = ok and rel > len(window)
                continue
            window = window[:rel] + inserted + window[rel + removed :]
            if rel < start and rel + removed <= start:  # typing at the region's start is in the region
                start += len(inserted) - removed
            elif rel < start:  # a deletion across the region's start
                start = rel + len(inserted)
        end = window.find("\n", start)
        final = window[start : end if end >= 0 else len(window)] if ok else None
        out.append((shown.session_id, shown.request_id, final))
    return pd.DataFrame(out, columns=["session_id", "request_id", "replayed_final"])


def add_finals(events: DataFrame, linked: DataFrame) -> DataFrame:
    """``final`` = settled snapshot, else the replayed region; ``final_source`` says which.

    Only sessions that log their edits are replayed: with no ``doc_change`` at all (a client that
    records only what it showed and what was accepted) a replay would invent an untouched document,
    so ``final`` stays null and the outcome says the code the user kept is unknown."""
    from pyspark.sql import functions as F

    logs_edits = events.where(F.col("event_type") == "doc_change").select("session_id").distinct()
    missing = (
        linked.where(F.col("snapshot_text").isNull())
        .join(logs_edits, "session_id")
        .select(*SESSION_KEY, F.lit(True).alias("needs_replay"))
    )
    sessions = missing.select("session_id").distinct()
    replay_input = (
        events.where(F.col("event_type").isin("completion_shown", "doc_change"))
        .join(sessions, "session_id")
        .join(missing, SESSION_KEY, "left")
        .select(
            "session_id",
            "request_id",
            "event_type",
            "seq",
            "offset",
            "prefix",
            "suffix",
            "removed_len",
            "inserted",
            F.coalesce("needs_replay", F.lit(False)).alias("needs_replay"),
        )
    )
    replayed = replay_input.groupBy("session_id").applyInPandas(replay_regions, REPLAY_SCHEMA)
    return (
        linked.join(replayed, SESSION_KEY, "left")
        .withColumns(
            {
                "final": F.coalesce("snapshot_text", "replayed_final"),
                "final_source": F.when(F.col("snapshot_text").isNotNull(), "snapshot").when(
                    F.col("replayed_final").isNotNull(), "replay"
                ),
            }
        )
        .drop("replayed_final")
    )


# The silver table, defined once: mine() produces exactly these columns (tests check the types).
SILVER_SCHEMA = schema(
    "session_id string, request_id string, user_id string, repo_id string, doc_id string, "
    "model_version string, trigger string, offset long, prefix string, suffix string, proposal string, "
    "confidence double, latency_ms long, shown_ts timestamp, reaction string, accepted_len long, "
    "reject_reason string, reaction_ts timestamp, time_to_react_ms double, final string, "
    "final_source string, outcome string, edit_distance int, similarity double, snapshot_age_s long, "
    "shown_event_id string, reaction_event_id string, snapshot_event_id string"
)


def mine(
    events: DataFrame, *, settle_s: int = SETTLE_S, as_arrived: bool = False
) -> tuple[DataFrame, DataFrame]:
    """Scoped, deduplicated events -> (silver refinements, orphans)."""
    linked, orphans = link(events, settle_s=settle_s, as_arrived=as_arrived)
    return classify(add_finals(events, linked)).select(*SILVER_SCHEMA.fieldNames()), orphans


def read_bronze(spark: SparkSession, lake: str, dates: list[str]) -> DataFrame:
    """The complete bronze partitions among ``dates``, with their ``dt`` as a string column."""
    from pyspark.sql import functions as F

    from echo_lib.core import lake as lake_io

    present = [d for d in dates if lake_io.is_complete(spark, lake, "bronze/events", d)]
    paths = [lake_io.partition_uri(lake, "bronze/events", d) for d in present]
    frame = spark.read.option("basePath", lake_io.table_uri(lake, "bronze/events")).parquet(*paths)
    return frame.withColumn("dt", F.date_format("dt", "yyyy-MM-dd"))


def run_mine(
    spark: SparkSession, lake: str, dt: str, *, settle_s: int = SETTLE_S, as_arrived: bool = False
) -> dict[str, Any]:
    """Mine silver refinements for ``dt`` (with the lookback rule); return the manifest."""
    from pyspark.sql import functions as F

    from echo_lib.core import lake as lake_io

    if not lake_io.is_complete(spark, lake, "bronze/events", dt):
        raise FileNotFoundError(
            f"no complete bronze partition for {dt}: run `echoctl ingest --date {dt}` first"
        )
    dates = lookback_dates(dt)
    bronze = read_bronze(spark, lake, dates)
    events = scope_sessions(bronze, dt).persist()
    try:
        silver, orphans = mine(events, settle_s=settle_s, as_arrived=as_arrived)
        silver = silver.persist()
        # one aggregate per frame for every count of the manifest (each count() is a Spark job)
        by_outcome: dict[str, int] = {}
        by_source: dict[str, int] = {}
        for r in silver.groupBy("outcome", "final_source").agg(F.count("*").alias("n")).collect():
            by_outcome[r["outcome"]] = by_outcome.get(r["outcome"], 0) + r["n"]
            by_source[str(r["final_source"])] = by_source.get(str(r["final_source"]), 0) + r["n"]
        totals = events.agg(
            F.count("*").alias("events"), F.countDistinct("session_id").alias("sessions")
        ).first()
        by_orphan = {
            r["reason"]: r["n"] for r in orphans.groupBy("reason").agg(F.count("*").alias("n")).collect()
        }
        manifest = {
            "dt": dt,
            "bronze_partitions_read": [
                d for d in dates if lake_io.is_complete(spark, lake, "bronze/events", d)
            ],
            "sessions": totals["sessions"],
            "events": totals["events"],
            "refinements": sum(by_outcome.values()),
            "by_outcome": {o: by_outcome.get(o, 0) for o in OUTCOMES},
            "final_source": dict(sorted(by_source.items())),
            "orphans": dict(sorted(by_orphan.items())),
            "settle_s": settle_s,
            "as_arrived": as_arrived,
        }
        lake_io.write_partition(
            spark,
            silver,
            lake,
            "silver/refinements",
            dt,
            manifest=manifest,
            sort_within=["session_id", "shown_ts"],
        )
        lake_io.write_partition(
            spark,
            orphans,
            lake,
            "quarantine/orphans",
            dt,
            manifest={"dt": dt, "orphans": manifest["orphans"]},
            files=1,
        )
        silver.unpersist()
    finally:
        events.unpersist()
    return manifest
