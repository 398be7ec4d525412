"""Silver refinements -> gold training datasets (sft, preference, kto) for a window of dates.

The funnel, in order (each step's rows in and out are recorded in the manifest):
settled -> non-trivial -> de-noised -> opted-in -> capped per user and file -> scrubbed ->
exact-deduplicated -> near-deduplicated (MinHashLSH) -> decontaminated against held-out code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from echo_lib.core.config import DatasetSettings
from echo_lib.core.spark import first_per_key, schema
from echo_lib.mining.privacy import scrub
from echo_lib.mining.refinements import ACCEPTED_OUTCOMES

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SCRUBBED_FIELDS = ("prefix", "suffix", "proposal", "final")
# The gold tables, defined once: to_sft, to_preference and to_kto produce exactly these (tested),
# and training reads them by these names.
GOLD_SCHEMAS = {
    "sft": schema("request_id string, prompt string, completion string, split string"),
    "preference": schema(
        "request_id string, prompt string, chosen string, rejected string, outcome string, split string"
    ),
    "kto": schema("request_id string, prompt string, completion string, label boolean, split string"),
}


# the steps every harvest applies (privacy, opt-out, evaluation hygiene); the rest are Echo's method
NAIVE_STEPS = ("settled", "opted_in", "scrubbed", "decontaminated")


def settled(df: DataFrame) -> DataFrame:
    return df.where("final IS NOT NULL")


def non_trivial(df: DataFrame, *, min_chars: int = 3) -> DataFrame:
    """Drop refinements that teach nothing: an empty or whitespace-only settled code, or shorter
    than ``min_chars`` once stripped."""
    from pyspark.sql import functions as F

    return df.where(F.length(F.trim("final")) >= min_chars)


def denoise(df: DataFrame) -> DataFrame:
    """Collapse repeats: the same proposal shown again at the same place in a session (after an
    undo or a retyped line) counts once, with its first (settled) outcome."""
    return first_per_key(df, ["session_id", "offset", "proposal"], "shown_ts", "request_id")


def of_users_or_repos(users: list[str], repos: list[str]) -> Column:
    """Rows of these users or repos (a table with ``user_id`` and ``repo_id``)."""
    from pyspark.sql import functions as F

    return F.col("user_id").isin(users or [""]) | F.col("repo_id").isin(repos or [""])


def opt_out(df: DataFrame, *, users: list[str], repos: list[str]) -> DataFrame:
    return df.where(~of_users_or_repos(users, repos))


def cap_contributions(df: DataFrame, *, per_user: int, per_file: int) -> DataFrame:
    """No single developer or file dominates: keep at most N rows each, chosen by a stable hash."""
    from pyspark.sql import functions as F

    order = F.xxhash64("request_id")
    capped = first_per_key(df, ["user_id"], order, "request_id", keep=per_user)
    return first_per_key(capped, ["doc_id"], order, "request_id", keep=per_file)


def _scrub_batch(batches):
    for pdf in batches:
        found = pd.Series(0, index=pdf.index)
        for name in SCRUBBED_FIELDS:
            results = [scrub(v) for v in pdf[name]]
            pdf[name] = [text for text, _ in results]
            found += [n for _, n in results]
        pdf["secrets_redacted"] = found.astype("int64")
        yield pdf


def scrub_secrets(df: DataFrame) -> DataFrame:
    """Replace secrets and e-mails in every text field (Arrow-based ``mapInPandas``)."""
    from pyspark.sql.types import LongType, StructField, StructType

    schema = StructType([*df.schema.fields, StructField("secrets_redacted", LongType())])
    return df.mapInPandas(_scrub_batch, schema)


def exact_dedupe(df: DataFrame, *, context_chars: int = 256) -> DataFrame:
    """Same settled code after the same context: keep one (the earliest)."""
    from pyspark.sql import functions as F

    key = F.sha2(
        F.concat_ws("\u0000", F.substring(F.col("prefix"), -context_chars, context_chars), "final"), 256
    )
    return first_per_key(df.withColumn("_key", key), ["_key"], "shown_ts", "request_id").drop("_key")


def near_dedupe(
    df: DataFrame, *, threshold: float = 0.2, context_chars: int = 256, seed: int = 0
) -> DataFrame:
    """Drop near-duplicates with Spark ML's MinHashLSH on character 5-grams of context + code.

    Two rows from *different* sessions whose Jaccard distance is below ``threshold`` are
    duplicates (the same boilerplate written again); the later one goes. Rows of one session
    overlap by construction (nearby cursor positions) and are distinct examples.
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import HashingTF, MinHashLSH, NGram
    from pyspark.sql import functions as F

    text = F.concat_ws(
        "", F.substring(F.col("prefix"), -context_chars, context_chars), F.lit("\u0001"), "final"
    )
    chars = F.split(text, "")
    keyed = df.withColumn("_chars", chars).withColumn("_id", F.concat_ws("|", "shown_ts", "request_id"))
    model = Pipeline(
        stages=[
            NGram(n=5, inputCol="_chars", outputCol="_grams"),
            HashingTF(inputCol="_grams", outputCol="_features", numFeatures=1 << 18, binary=True),
            MinHashLSH(inputCol="_features", outputCol="_hashes", numHashTables=4, seed=seed),
        ]
    ).fit(keyed)
    hashed = model.transform(keyed).where(F.size("_grams") > 0)
    lsh = model.stages[-1]
    pairs = lsh.approxSimilarityJoin(hashed, hashed, threshold, distCol="_dist").where(
        (F.col("datasetA._id") < F.col("datasetB._id"))
        & (F.col("datasetA.session_id") != F.col("datasetB.session_id"))
    )
    later = pairs.select(F.col("datasetB._id").alias("_id")).distinct()
    return keyed.join(later, "_id", "left_anti").drop("_chars", "_id")


def decontaminate(df: DataFrame, heldout_lines: DataFrame, *, min_line_chars: int = 20) -> DataFrame:
    """Drop rows whose completed line (the cursor's line prefix + the settled code) appears,
    stripped, in a held-out file: evaluation code must never be trained on."""
    from pyspark.sql import functions as F

    line_start = F.element_at(F.split(F.col("prefix"), "\n"), -1)
    completed = F.trim(F.concat(line_start, F.col("final")))
    rows = df.withColumn("_line", completed)
    held = (
        heldout_lines.select(F.trim("line").alias("_line"))
        .where(F.length("_line") >= min_line_chars)
        .distinct()
    )
    return rows.join(held, "_line", "left_anti").drop("_line")


def split_column(df: DataFrame, *, validation_percent: int = 5) -> DataFrame:
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64("session_id"), F.lit(100))
    return df.withColumn("split", F.when(bucket < validation_percent, "validation").otherwise("train"))


def to_sft(df: DataFrame) -> DataFrame:
    """prompt = the context before the cursor, completion = the code the user kept."""
    from pyspark.sql import functions as F

    return df.select(
        "request_id", F.col("prefix").alias("prompt"), F.col("final").alias("completion"), "split"
    )


def to_preference(df: DataFrame) -> DataFrame:
    """prompt, chosen = what the user kept, rejected = what the agent proposed (where they differ)."""
    from pyspark.sql import functions as F

    differs = F.trim("final") != F.trim("proposal")
    return df.where(differs).select(
        "request_id",
        F.col("prefix").alias("prompt"),
        F.col("final").alias("chosen"),
        F.col("proposal").alias("rejected"),
        "outcome",
        "split",
    )


def to_kto(df: DataFrame) -> DataFrame:
    """prompt, completion, label: the proposal (desirable where the user accepted it, as the
    acceptance metric counts: whole or in part, edited after or not) and, where the user did not
    keep it as shown, the kept code (desirable)."""
    from pyspark.sql import functions as F

    proposals = df.select(
        "request_id",
        F.col("prefix").alias("prompt"),
        F.col("proposal").alias("completion"),
        F.col("outcome").isin(*ACCEPTED_OUTCOMES).alias("label"),
        "split",
    )
    kept = df.where(F.col("outcome") != "accepted_unchanged").select(
        "request_id",
        F.col("prefix").alias("prompt"),
        F.col("final").alias("completion"),
        F.lit(True).alias("label"),
        "split",
    )
    return proposals.unionByName(kept)


def content_hash(df: DataFrame) -> tuple[str, int]:
    """(order-independent SHA-256 of a dataset's rows, number of rows): identical rows, identical
    hash; the rows are counted from the collected hashes rather than by another job."""
    from pyspark.sql import functions as F

    row_hashes = df.select(F.sha2(F.to_json(F.struct(*sorted(df.columns))), 256).alias("h"))
    digest = hashlib.sha256()
    rows = row_hashes.orderBy("h").collect()
    for row in rows:
        digest.update(row["h"].encode())
    return digest.hexdigest(), len(rows)


def heldout_lines_frame(spark: SparkSession, texts: list[str]) -> DataFrame:
    lines = sorted({line.strip() for text in texts for line in text.splitlines() if len(line.strip()) >= 20})
    return spark.createDataFrame([(line,) for line in lines], "line string")


def build(
    spark: SparkSession,
    silver: DataFrame,
    heldout: DataFrame,
    settings: DatasetSettings,
    say: Callable[[str], None] | None = None,
    persisted: list[DataFrame] | None = None,
) -> tuple[dict[str, DataFrame], list[dict[str, Any]]]:
    """Run the funnel; return the gold frames and the funnel (rows in/out of every step, also
    told to ``say`` as each step is counted). Each step's frame is cached for the next one and
    added to ``persisted``: the caller unpersists them once the gold is written (a long-lived
    session, like the flywheel's, would otherwise keep every build's cached plans)."""
    persisted = [] if persisted is None else persisted
    if settings.harvest == "accepted":  # what simple harvesting keeps: accepted proposals as shown
        from pyspark.sql import functions as F

        silver = silver.where(F.col("outcome") == "accepted_unchanged").withColumn("final", F.col("proposal"))
    steps = [
        ("settled", "no settled code (no snapshot, replay failed)", settled),
        (
            "non_trivial",
            "empty or shorter than min_chars",
            lambda d: non_trivial(d, min_chars=settings.min_chars),
        ),
        ("denoised", "repeat of the same proposal at the same place", denoise),
        (
            "opted_in",
            "user or repo opted out",
            lambda d: opt_out(d, users=settings.opt_out_users, repos=settings.opt_out_repos),
        ),
        (
            "capped",
            "over the per-user or per-file cap",
            lambda d: cap_contributions(d, per_user=settings.cap_per_user, per_file=settings.cap_per_file),
        ),
        ("scrubbed", "secrets and e-mails replaced (rows kept)", scrub_secrets),
        ("exact_deduped", "exact duplicate of context and code", exact_dedupe),
        (
            "near_deduped",
            "near duplicate (MinHashLSH)",
            lambda d: near_dedupe(d, threshold=settings.near_dup_distance),
        ),
        ("decontaminated", "completed line appears in held-out code", lambda d: decontaminate(d, heldout)),
    ]
    if settings.harvest != "refinements":  # the naive baselines skip Echo's own quality steps
        steps = [step for step in steps if step[0] in NAIVE_STEPS]
    funnel, current = [], silver
    rows_in = current.count()
    for name, reason, step in steps:
        current = step(current).persist()
        persisted.append(current)
        rows_out = current.count()
        funnel.append(
            {
                "step": name,
                "rows_in": rows_in,
                "rows_out": rows_out,
                "dropped": rows_in - rows_out,
                "reason": reason,
            }
        )
        if say:
            say(f"build: {name}: {rows_in:,} -> {rows_out:,} rows")
        rows_in = rows_out
    final = split_column(current, validation_percent=settings.validation_percent).persist()
    persisted.append(final)
    funnel.append(
        {
            "step": "secrets_redacted",
            "count": int(final.agg({"secrets_redacted": "sum"}).collect()[0][0] or 0),
        }
    )
    return {"sft": to_sft(final), "preference": to_preference(final), "kto": to_kto(final)}, funnel


def run_build(
    spark: SparkSession,
    lake: str,
    dates: list[str],
    heldout_texts: list[str],
    *,
    settings: DatasetSettings | None = None,
    out_dt: str | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build gold for ``dates`` (one or a window); write under ``out_dt`` (default: the last date)."""
    from echo_lib.core import lake as lake_io
    from echo_lib.mining.erasure import forgotten

    settings = settings or DatasetSettings()
    users, repos = forgotten(lake)  # erasure requests bind every later build
    if users or repos:
        settings = settings.model_copy(
            update={
                "opt_out_users": sorted({*settings.opt_out_users, *users}),
                "opt_out_repos": sorted({*settings.opt_out_repos, *repos}),
            }
        )
    present = [d for d in dates if lake_io.is_complete(spark, lake, "silver/refinements", d)]
    if not present:
        raise FileNotFoundError(f"no silver refinements for {', '.join(dates)}: run `echoctl mine` first")
    paths = [lake_io.partition_uri(lake, "silver/refinements", d) for d in present]
    silver = spark.read.parquet(*paths)
    out_dt = out_dt or dates[-1]
    persisted: list[DataFrame] = []
    try:
        frames, funnel = build(
            spark, silver, heldout_lines_frame(spark, heldout_texts), settings, say, persisted
        )
        manifest = {
            "dt": out_dt,
            "dates": present,
            "inputs": paths,
            "settings": settings.model_dump(mode="json"),
            "funnel": funnel,
            "datasets": {},
        }
        # the tables and their manifest commit together: one lease for the date, the manifest last
        with lake_io.holding(spark, lake, "gold/_manifests", out_dt):
            for name, frame in frames.items():
                frame = frame.persist()
                persisted.append(frame)
                manifest["datasets"][name] = write_gold_table(spark, lake, name, out_dt, frame)
                if say:
                    say(
                        f"build: gold/{name} dt={out_dt}: {manifest['datasets'][name]['rows']:,} rows written"
                    )
            return write_gold_manifest(spark, lake, out_dt, manifest, lease=False)
    finally:
        for frame in persisted:
            frame.unpersist()


def write_gold_table(
    spark: SparkSession, lake: str, name: str, dt: str, frame: DataFrame, **extra: Any
) -> dict[str, Any]:
    """Write ``gold/<name>`` dt=D carrying its content hash (what the gold manifest vouches for);
    return the manifest's entry for it. Call under the gold manifest's lease of ``dt``."""
    from echo_lib.core import lake as lake_io

    sha256, rows = content_hash(frame)
    entry = {"rows": rows, "sha256": sha256, "uri": lake_io.partition_uri(lake, f"gold/{name}", dt)}
    lake_io.write_partition(
        spark,
        frame,
        lake,
        f"gold/{name}",
        dt,
        manifest={**entry, **extra},
        sort_within=["request_id"],
        files=1,
    )
    return entry


def write_gold_manifest(
    spark: SparkSession, lake: str, dt: str, manifest: dict[str, Any], *, lease: bool = True
) -> dict[str, Any]:
    """Seal ``manifest`` with the SHA-256 of its text (without that field) and write it as
    ``gold/_manifests/dt=D``, the partition that vouches for the gold tables of ``dt``."""
    from echo_lib.core import lake as lake_io

    manifest = {k: v for k, v in manifest.items() if k != "sha256"}
    text = json.dumps(manifest, indent=2, sort_keys=True)
    manifest["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    frame = spark.createDataFrame([(text,)], "manifest string")
    lake_io.write_partition(
        spark, frame, lake, "gold/_manifests", dt, manifest=manifest, files=1, lease=lease
    )
    return manifest


def log_manifest(cfg, manifest: dict[str, Any]) -> str:
    """One MLflow run per build: the funnel as metrics, hashes as tags, the manifest as artifact."""
    import tempfile
    from pathlib import Path

    import mlflow

    from echo_lib.core.tracking import configure_mlflow

    experiment_id = configure_mlflow(cfg)
    tags = {
        "echo.stage": "build-dataset",
        "echo.gold_dt": manifest["dt"],
        "echo.manifest_sha256": manifest["sha256"],
    }
    tags.update({f"echo.{name}.sha256": d["sha256"] for name, d in manifest["datasets"].items()})
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"build-dataset-{manifest['dt']}", tags=tags
    ) as run:
        mlflow.log_params(
            {
                f"dataset.{k}": json.dumps(v) if isinstance(v, list) else v
                for k, v in manifest["settings"].items()
            }
            | {"dates": ",".join(manifest["dates"])}
        )
        mlflow.log_metrics(
            {f"funnel.{s['step']}": float(s.get("rows_out", s.get("count", 0))) for s in manifest["funnel"]}
        )
        mlflow.log_metrics({f"rows.{name}": float(d["rows"]) for name, d in manifest["datasets"].items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "_manifest.json"
            path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            mlflow.log_artifact(str(path))
    return run.info.run_id
