"""``echoctl train``: refine the champion on a window of gold datasets and register a challenger.

One job, one MLflow run, one new model version:

1. pick the gold dates (``--from/--to`` or the newest ``learn.window_days``) and read their
   ``gold/{sft,preference,kto}`` partitions (train split only; a request seen in two windows once);
2. warm-start from ``models:/<name>@champion`` (weights and tokenizer);
3. shape rows the way the engine will be asked: the prompt's last token moves into the
   completion (token healing regenerates it at serving time), the completion ends with the
   newline that stops a proposal, long prompts lose whole lines at the front; SFT and KTO get ``learn.replay_share`` of public-code rows so the model keeps what it
   knew;
4. train each stage of the objective (``sft+dpo`` = SFT, then DPO from the SFT weights) with TRL
   under the ``deepspeed`` launcher (:mod:`echo_lib.training.rank`), checkpointing every
   ``learn.save_steps``;
5. register the result as a new version with alias ``challenger``, tagged with its parent version
   and its data.

A killed job leaves its plan under ``var/work/train/<run_id>``; ``echoctl train --resume`` picks it
up from the last checkpoint of the unfinished stage, in the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_lib.core.config import EchoConfig
from echo_lib.core.lake import UnvouchedPartition, arrow_fs, gold_dates, read_manifest, vouched_gold_partition
from echo_lib.training import sources
from echo_lib.world import corpus

if TYPE_CHECKING:
    import pandas as pd

STAGES: dict[str, list[str]] = {"sft": ["sft"], "dpo": ["dpo"], "kto": ["kto"], "sft+dpo": ["sft", "dpo"]}
GOLD_TABLE = {"sft": "sft", "dpo": "preference", "kto": "kto"}
COMPLETION_FIELDS = {"sft": ("completion",), "dpo": ("chosen", "rejected"), "kto": ("completion",)}


CONTROL = "control"  # alias of the newest equal-compute control model
# baselines at equal compute: data -> (alias, team split or None); never promoted
BASELINES = {
    "public": (CONTROL, None),  # public code only: "it is just more training"
    "team-experience": ("repo", "experience"),  # fine-tune on the team's own files (what teams do instead)
    "team-heldout": ("instrument", "heldout"),  # the held-out files themselves: can evaluation see learning?
}


class TrainError(RuntimeError):
    """``echoctl train`` cannot run or failed; no model version was registered."""


class NoTrainingData(TrainError):
    """The window holds nothing to learn from (no gold rows, or every row dropped)."""


@dataclass
class TrainPlan:
    """What a training job will do; saved as ``plan.json`` so ``--resume`` can finish it."""

    run_id: str
    work: str
    objective: str
    dates: list[str]
    parent_version: str
    parent_dir: str
    preset: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    control: bool = False  # a baseline at equal compute (see BASELINES), never promoted
    baseline: str | None = None  # which one

    def save(self) -> None:
        Path(self.work, "plan.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, work: Path) -> TrainPlan:
        return cls(**json.loads((work / "plan.json").read_text()))


@dataclass
class TrainResult:
    version: str
    run_id: str
    parent_version: str
    dates: list[str]
    stages: list[dict[str, Any]]
    seconds: float


# ---- gold -------------------------------------------------------------------------------------


def select_window(available: list[str], start: str | None, end: str | None, window_days: int) -> list[str]:
    """The gold dates to train on: ``[start, end]`` if given, else the newest ``window_days``."""
    if start or end:
        chosen = [d for d in available if (not start or d >= start) and (not end or d <= end)]
    else:
        chosen = available[-window_days:]
    if not chosen:
        have = ", ".join(available) if available else "none"
        window = f"{start or '...'} to {end or '...'}" if (start or end) else f"the newest {window_days}"
        raise TrainError(
            f"no gold datasets in {window} (gold dates present: {have}); run `echoctl build-dataset` first"
        )
    return chosen


def read_gold(lake: str, table: str, dates: list[str], split: str = "train") -> pd.DataFrame:
    """``split`` rows of ``gold/<table>`` for ``dates``; a request in several builds counts once
    (the newest build wins). Missing partitions or columns raise :class:`TrainError`."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    from echo_lib.mining.dataset import GOLD_SCHEMAS

    fs, root = arrow_fs(lake)
    required = GOLD_SCHEMAS[table].fieldNames()
    frames = []
    for dt in dates:
        path = f"{root}/gold/{table}/dt={dt}"
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise TrainError(f"gold/{table} has no partition dt={dt} ({path}); rebuild it with build-dataset")
        try:
            vouched_gold_partition(lake, table, dt)
        except UnvouchedPartition as exc:
            raise TrainError(str(exc)) from exc
        data = ds.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True)
        missing = [c for c in required if c not in data.schema.names]
        if missing:
            raise TrainError(f"gold/{table} dt={dt} lacks columns {missing}; it needs {list(required)}")
        frame = data.to_table(columns=list(required)).to_pandas()
        frame["dt"] = dt
        frames.append(frame)
    import pandas as pd

    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["split"] == split]
    rows = rows.sort_values(["dt", "request_id"]).drop_duplicates("request_id", keep="last")
    return rows.drop(columns=["split"]).reset_index(drop=True)


# ---- rows as the engine will see them -------------------------------------------------------------


def heal_split(tokenizer, prompt: str, completions: list[str]) -> tuple[str, list[str]]:
    """Text rows split where the engine splits (:func:`~echo_lib.agent.engine.heal`): the healed
    token's text starts every completion. Each completion ends with the newline that stops a
    proposal."""
    from echo_lib.agent.engine import cached_byte_table, heal

    encoded = prompt.encode("utf-8", "surrogatepass")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    _, owed = heal(ids, cached_byte_table(tokenizer))
    # a healed token holding the end of a character (byte-level BPE splits "é") moves the whole
    # character to the completions: text rows cannot split a character
    kept = encoded[: len(encoded) - len(owed)].decode("utf-8", "ignore")
    owed_text = prompt[len(kept) :]
    return kept, [owed_text + c.rstrip("\n") + "\n" for c in completions]


def fit_prompt(tokenizer, prompt: str, budget: int) -> str | None:
    """Drop whole lines from the front of ``prompt`` until it is at most ``budget`` tokens."""
    if budget <= 0:
        return None
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if len(ids) <= budget:
        return prompt
    first_char = offsets[len(ids) - budget][0]
    start = prompt.find("\n", max(first_char - 1, 0)) + 1
    return prompt[start:] if start > 0 else None


def sft_ids(
    tokenizer,
    prompt: str,
    completion: str,
    max_length: int,
    *,
    window_step: int = 1,
    prompt_tokens: int = 0,
) -> dict[str, list[int]] | None:
    """Token ids exactly as the engine builds its prompt: the prefix's tokens minus the last one
    (healed), left-truncated to fit by the engine's own rule (``truncate_prompt`` with
    ``window_step``; ``prompt_tokens``, the engine's prompt budget, caps the window when given);
    the target is the healed text, the completion, the stopping newline and EOS. None if the
    completion alone does not fit."""
    from echo_lib.agent.engine import cached_byte_table, heal, truncate_prompt

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids, owed_bytes = heal(prompt_ids, cached_byte_table(tokenizer))
    kept = completion.rstrip("\n") + "\n"
    try:
        target = tokenizer(owed_bytes.decode("utf-8") + kept, add_special_tokens=False)["input_ids"]
    except UnicodeDecodeError:  # the healed token ends a character: it is the target's first token
        target = [prompt_ids[-1], *tokenizer(kept, add_special_tokens=False)["input_ids"]]
    target = [*target, tokenizer.eos_token_id]
    budget = max_length - len(target)
    if budget < 1:
        return None
    if prompt_tokens:
        budget = min(budget, prompt_tokens)
    ids = truncate_prompt(ids, budget, window_step) or [tokenizer.eos_token_id]
    return {"input_ids": ids + target, "completion_mask": [0] * len(ids) + [1] * len(target)}


def prompt_window(engine, context: int) -> dict[str, int]:
    """``sft_ids``'s window arguments for an engine config: its step, and with a step > 1 its prompt
    budget too, so a row's window starts where serving's does (at step 1 rows keep today's
    truncation to the context, of which serving's prompt is the tail)."""
    step = engine.prompt_window_step
    return {"window_step": step, "prompt_tokens": context - engine.max_new_tokens if step > 1 else 0}


def shape_rows(
    stage: str,
    records: list[dict[str, Any]],
    tokenizer,
    max_length: int,
    window: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Gold (or replay) records -> training rows for ``stage``; returns the rows and the drops.

    SFT rows are token ids (TRL takes them as they are, so training sees exactly the engine's
    prompt); DPO/KTO rows are text split the same way, which TRL tokenises itself."""
    fields = COMPLETION_FIELDS[stage]
    rows, dropped = [], {"completion_too_long": 0}
    for record in records:
        if stage == "sft":
            row = sft_ids(tokenizer, record["prompt"], record["completion"], max_length, **(window or {}))
        else:
            prompt, completions = heal_split(tokenizer, record["prompt"], [record[f] for f in fields])
            longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions)
            fitted = fit_prompt(tokenizer, prompt, max_length - longest - 2)  # room for bos/eos
            row = (
                None if fitted is None else {"prompt": fitted, **dict(zip(fields, completions, strict=True))}
            )
        if row is None:
            dropped["completion_too_long"] += 1
            continue
        if stage == "kto":
            row["label"] = bool(record["label"])
        row["source"], row["request_id"] = record.get("source", "gold"), record.get("request_id")
        rows.append(row)
    return rows, dropped


def replay_records(
    texts: list[str], count: int, seed: int, *, context_chars: int = 4000
) -> list[dict[str, Any]]:
    """``count`` public-code records: one line of a public file after the lines before it."""
    rng = random.Random(seed)
    docs = [t.splitlines() for t in texts if t.count("\n") >= 2]
    records: list[dict[str, Any]] = []
    attempts = 0
    while docs and len(records) < count and attempts < count * 20:
        attempts += 1
        lines = rng.choice(docs)
        i = rng.randrange(1, len(lines))
        if not lines[i].strip():
            continue
        before = "\n".join(lines[:i]) + "\n"
        cut = (
            before.find("\n", max(len(before) - context_chars, 0) - 1) + 1
            if len(before) > context_chars
            else 0
        )
        records.append(
            {
                "prompt": before[cut:],
                "completion": lines[i],
                "label": True,
                "source": "replay",
                "request_id": None,
            }
        )
    return records


def replay_count(gold_rows: int, share: float) -> int:
    """Replay rows so that replay / (gold + replay) == share (rounded)."""
    return round(gold_rows * share / (1 - share)) if share > 0 else 0


def replay_blocks(
    texts: list[str], count: int, tokenizer, block_len: int, seed: int, *, source: str = "replay"
) -> list[dict[str, Any]]:
    """``count`` full-loss blocks of random stretches of ``texts`` (as in pretraining) for the rows
    recipe: replay of public code measured in loss tokens, or a team's own files for the baselines."""
    from echo_lib.training.recipe import file_blocks

    drawn = file_blocks(texts, count, tokenizer, block_len, seed, source=source, min_tokens=block_len // 2)
    return [_full_loss_row(r["input_ids"], source) for r in drawn]


def context_blocks(records: list[dict[str, Any]], tokenizer, block_len: int) -> list[dict[str, Any]]:
    """Full-loss blocks of the code around the refinements: each prompt followed by the code the
    user kept there, once per stretch of code (consecutive requests in one file share almost all
    of their prompt, so a text whose last lines were all seen in a longer one is skipped)."""
    texts = sorted(
        (r["prompt"] + r["completion"].rstrip("\n") + "\n" for r in records), key=len, reverse=True
    )
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for text in texts:
        lines = [line for line in text.splitlines() if line.strip()]
        tail = lines[-20:]
        if tail and sum(line in seen for line in tail) >= 0.8 * len(tail):
            continue
        seen.update(lines)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for end in range(len(ids), 0, -block_len):  # newest code first; the start may be cut
            block = ids[max(0, end - block_len) : end]
            if len(block) >= block_len // 4:
                rows.append(_full_loss_row(block, "context"))
    return rows


def _full_loss_row(ids: list[int], source: str) -> dict[str, Any]:
    return {"input_ids": list(ids), "completion_mask": [1] * len(ids), "source": source, "request_id": None}


def loss_tokens(rows: list[dict[str, Any]]) -> int:
    return sum(sum(r["completion_mask"]) for r in rows if "completion_mask" in r)


def default_steps(rows: int, per_step: int, cap: int) -> int:
    """About two passes over the rows, at least one step, at most ``cap``."""
    return max(1, min(cap, math.ceil(2 * rows / per_step)))


# ---- the job ------------------------------------------------------------------------------------


def resume_pointer(cfg: EchoConfig, owner: str = "cli") -> Path:
    """Where an unfinished run of ``owner`` is recorded: ``LATEST`` for the CLI, ``LATEST-<owner>``
    for others (each Airflow DAG run has its own), so that a retry resumes its own run only."""
    name = "LATEST" if owner == "cli" else "LATEST-" + re.sub(r"[^A-Za-z0-9_.-]", "_", owner)
    return cfg.var_path / "work" / "train" / name


def train(
    cfg: EchoConfig,
    *,
    start: str | None = None,
    end: str | None = None,
    objective: str | None = None,
    num_procs: int | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    control: bool = False,
    baseline: str | None = None,
    as_challenger: bool = False,
    owner: str = "cli",
    progress: Callable[[str], None] = print,
) -> TrainResult:
    """Refine @champion on gold and register @challenger. With ``control``, train the same steps on
    the same number of rows of public code instead of gold and register it as @control: the
    equal-compute baseline that tells learning from refinements apart from more training.

    ``as_challenger`` registers a baseline's model as @challenger, promotable: a flywheel arm runs
    the baseline as its own closed loop, in its own registered model."""
    from echo_lib.core import registry
    from echo_lib.core.tracking import configure_mlflow
    from echo_lib.training import lifecycle

    began = time.perf_counter()
    configure_mlflow(cfg)
    client = registry.client(cfg)
    procs = num_procs or cfg.train.num_procs
    if resume:
        plan = _resumable_plan(cfg, owner)
        registered = client.search_model_versions(f"run_id = '{plan.run_id}'")
        if registered:  # killed after registering: the version exists, do not make a second one
            resume_pointer(cfg, owner).unlink(missing_ok=True)
            progress(f"training run {plan.run_id} had registered v{registered[0].version} already")
            return TrainResult(
                version=str(registered[0].version),
                run_id=plan.run_id,
                parent_version=plan.parent_version,
                dates=plan.dates,
                stages=[_stage_summary(s) for s in plan.stages],
                seconds=time.perf_counter() - began,
            )
        progress(f"resuming training run {plan.run_id} ({plan.objective}, gold {', '.join(plan.dates)})")
        client.update_run(plan.run_id, status="RUNNING")
    else:
        if control:
            baseline = baseline or "public"
        if baseline is not None and baseline not in BASELINES:
            raise TrainError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
        plan = _plan(
            cfg,
            start,
            end,
            objective or cfg.learn.objective,
            procs,
            max_steps,
            progress,
            baseline,
            control=baseline is not None and not as_challenger,
        )
        resume_pointer(cfg, owner).write_text(plan.work)
    hint = (
        "; continue with `echoctl train --resume`" if owner == "cli" else "; a retry of this run resumes it"
    )
    with lifecycle.ending(client, plan.run_id, TrainError, hint=hint):
        init = plan.parent_dir
        for stage in plan.stages:
            finished = lifecycle.stage_report(stage["checkpoint_dir"]) is not None
            if finished and (Path(stage["output_dir"]) / "config.json").is_file():
                progress(f"stage {stage['name']}: already trained, skipped")
                init = stage["output_dir"]
                continue
            job_path = Path(stage["job"])
            job = json.loads(job_path.read_text())
            job.update(init_model=init, resume=resume)
            job_path.write_text(json.dumps(job, indent=2))
            progress(
                f"stage {stage['name']}: {job['max_steps']} steps on {stage['rows']:,} rows "
                f"({stage['replay_rows']:,} replay), {procs} rank(s) (log: {stage['log']}) ..."
            )
            lifecycle.run_stage(
                cfg, job_path, Path(stage["log"]), stage["checkpoint_dir"], num_procs=procs, progress=progress
            )
            init = stage["output_dir"]
        policy = None
        if cfg.calibration.enabled:
            from echo_lib.training.calibrate import calibrate

            policy = calibrate(cfg, Path(init), plan.parent_version, progress)
        version = _register(cfg, client, plan, init, policy)
    resume_pointer(cfg, owner).unlink(missing_ok=True)
    for stage in plan.stages:
        shutil.rmtree(stage["output_dir"], ignore_errors=True)  # the registered copy is in MLflow
    return TrainResult(
        version=str(version.version),
        run_id=plan.run_id,
        parent_version=plan.parent_version,
        dates=plan.dates,
        stages=[_stage_summary(s) for s in plan.stages],
        seconds=time.perf_counter() - began,
    )


def _resumable_plan(cfg: EchoConfig, owner: str) -> TrainPlan:
    pointer = resume_pointer(cfg, owner)
    if not pointer.is_file():
        who = "`echoctl train`" if owner == "cli" else owner
        raise TrainError(f"nothing to resume: no interrupted {who} in this var/ folder")
    work = Path(pointer.read_text().strip())
    if not (work / "plan.json").is_file():
        raise TrainError(f"nothing to resume: {work}/plan.json is missing")
    return TrainPlan.load(work)


def _plan(
    cfg: EchoConfig,
    start: str | None,
    end: str | None,
    objective: str,
    procs: int,
    max_steps: int | None,
    progress: Callable[[str], None],
    baseline: str | None = None,
    *,
    control: bool = False,
) -> TrainPlan:
    """Validate the data, fetch the champion, shape the rows and open the MLflow run."""
    import pandas as pd

    from echo_lib.agent.engine import fetch_model
    from echo_lib.agent.presets import get_preset
    from echo_lib.agent.tokenizer import load_tokenizer
    from echo_lib.core import registry
    from echo_lib.training.rank import TrainJob

    if objective not in STAGES:
        raise TrainError(f"unknown objective {objective!r}; choose one of {', '.join(STAGES)}")
    if baseline is not None and "dpo" in STAGES[objective]:
        raise TrainError(
            "an equal-compute control exists for sft and kto (public code has no preference pairs)"
        )
    if baseline not in (None, "public") and objective != "sft":
        raise TrainError(f"the {baseline} baseline trains sft only (code has no outcome labels)")
    lake, learn = cfg.lake_uri, cfg.learn
    dates = select_window(gold_dates(lake), start, end, learn.window_days)
    gold = {s: read_gold(lake, GOLD_TABLE[s], dates) for s in STAGES[objective]}
    for stage, rows in gold.items():
        if rows.empty:
            raise NoTrainingData(
                f"gold/{GOLD_TABLE[stage]} has no train rows for {', '.join(dates)}: nothing to learn from"
            )
    champion = registry.version_by_alias(cfg, registry.CHAMPION)
    if champion is None:
        raise TrainError("no champion to refine: run `echoctl bootstrap` first")
    progress(f"warm start from champion v{champion.version}; gold dates {', '.join(dates)}")
    parent_dir = fetch_model(
        f"models:/{cfg.mlflow.registered_model}/{champion.version}",
        cfg.mlflow_tracking_uri,
        cfg.var_path / "cache" / "models",
    )
    tokenizer = load_tokenizer(parent_dir)
    preset = get_preset(champion.tags.get("echo.preset") or cfg.train.preset)
    context = int(json.loads((parent_dir / "config.json").read_text())["max_position_embeddings"])
    window = prompt_window(cfg.engine, context)  # training rows see serving's prompts
    world = (
        procs * cfg.train.num_nodes if cfg.train.num_gpus == 0 else cfg.train.num_gpus * cfg.train.num_nodes
    )
    public_texts = [f.text for f in corpus.scan(corpus.public_repos(cfg), cfg).select("train")]

    from echo_lib.training import lifecycle

    client = registry.client(cfg)
    run_id, work = lifecycle.open_run(
        cfg,
        client,
        kind="train",
        run_name=f"{BASELINES[baseline][0] if baseline else 'train'}-{objective}-{dates[-1]}",
        tags={
            "echo.objective": objective,
            "echo.parent_version": str(champion.version),
            "echo.control": str(control).lower(),
            "echo.baseline": baseline or "none",
        },
    )
    plan = TrainPlan(
        run_id=run_id,
        work=str(work),
        objective=objective,
        dates=dates,
        parent_version=str(champion.version),
        parent_dir=str(parent_dir),
        preset=preset.name,
        control=control,
        baseline=baseline,
    )
    per_step = preset.micro_batch_size * preset.grad_accum * world
    blocks = learn.recipe == "blocks"
    try:
        for i, stage in enumerate(STAGES[objective]):
            info: dict[str, Any] = {}
            if stage == "sft" and blocks:  # every arm: the same full-loss blocks budget
                rows, info = sources.plan_blocks(
                    cfg,
                    baseline=baseline,
                    sft=gold[stage],
                    preference=_optional_gold(lake, "preference", dates, progress),
                    tokenizer=tokenizer,
                    block_len=context,
                    rows_per_step=per_step,
                    steps=max_steps or learn.max_steps or None,
                    public_texts=public_texts,
                    window_end=dates[-1],
                )
                dropped, planned_rows = {}, len(rows)
                progress(
                    f"blocks: {info['rows']:,} of {context} tokens ({info['replay_rows']:,} replay), "
                    f"{info['loss_tokens']:,} loss tokens ({info['team_loss_tokens']:,} of team code), "
                    f"{info['window_session_blocks']:,} session blocks in the window"
                )
            else:
                records = gold[stage].to_dict("records")
                rows, dropped = shape_rows(stage, records, tokenizer, context, window)
            if stage == "sft" and not blocks:
                # loss tokens, not rows: the code around each refinement, then public-code replay
                extra = context_blocks(records, tokenizer, context) if learn.context_loss else []
                replay_tokens = replay_count(loss_tokens(rows) + loss_tokens(extra), learn.replay_share)
                replay = replay_blocks(
                    public_texts, math.ceil(replay_tokens / context), tokenizer, context, learn.seed + i
                )
                planned_rows = len(rows) + len(extra) + len(replay)
                if baseline == "public":  # the same rows and tokens, all public code
                    rows, _ = shape_rows(
                        stage,
                        replay_records(public_texts, len(rows), learn.seed + 100),
                        tokenizer,
                        context,
                        window,
                    )
                    extra = replay_blocks(public_texts, len(extra), tokenizer, context, learn.seed + 101)
                elif baseline:  # the team's files themselves, as many loss tokens as gold and context
                    split = BASELINES[baseline][1]
                    team = [f.text for f in corpus.scan(corpus.team_repos(cfg), cfg).select(split)]
                    count = math.ceil((loss_tokens(rows) + loss_tokens(extra)) / context)
                    rows = replay_blocks(team, count, tokenizer, context, learn.seed + 102, source=baseline)
                    extra = []
                elif learn.team_files_share > 0:  # echo+repo: the team's files beside gold
                    team = [f.text for f in corpus.scan(corpus.team_repos(cfg), cfg).select("experience")]
                    count = math.ceil(learn.team_files_share * len(extra))
                    extra = extra[: len(extra) - count] + replay_blocks(
                        team, count, tokenizer, context, learn.seed + 103, source="team-experience"
                    )
                rows += extra + replay
            elif not info:  # kto, dpo
                n_replay = replay_count(len(rows), learn.replay_share) if stage != "dpo" else 0
                replay, _ = shape_rows(
                    stage, replay_records(public_texts, n_replay, learn.seed + i), tokenizer, context, window
                )
                rows += replay
                if baseline:  # same count and shape, public code only
                    rows, _ = shape_rows(
                        stage,
                        replay_records(public_texts, len(rows), learn.seed + 100 + i),
                        tokenizer,
                        context,
                        window,
                    )
                planned_rows = len(rows)
            if not rows:
                raise NoTrainingData(f"stage {stage}: every gold row was dropped ({dropped})")
            data_path = work / f"{stage}.parquet"
            frame = pd.DataFrame(rows)
            frame.to_parquet(data_path, index=False)
            # every arm trains the steps the gold arm would: equal compute
            steps = (
                info.get("steps")
                or max_steps
                or learn.max_steps
                or default_steps(planned_rows, per_step, learn.max_steps_cap)
            )
            job = TrainJob(
                data_path=str(data_path),
                tokenizer_path=str(parent_dir),
                output_dir=str(work / f"model-{stage}"),
                checkpoint_dir=str(cfg.checkpoint_dir / "train" / plan.run_id / stage),
                preset=preset.name,
                objective="blocks" if info else stage,
                unlikelihood=learn.unlikelihood if info else 0.0,
                init_model=str(parent_dir),
                max_steps=steps,
                micro_batch_size=preset.micro_batch_size,
                grad_accum=preset.grad_accum,
                learning_rate=learn.learning_rate,
                warmup_steps=min(preset.warmup_steps, steps // 10),
                weight_decay=learn.weight_decay,
                beta=learn.beta,
                seed=learn.seed,
                zero_stage=cfg.train.zero_stage,
                use_cpu=cfg.train.num_gpus == 0,
                torch_threads=cfg.train.torch_threads,
                save_steps=learn.save_steps,
                logging_steps=max(1, min(10, steps // 5)),
                max_length=context,
                metric_prefix=f"{stage}/" if len(STAGES[objective]) > 1 else "",
                mlflow_tracking_uri=cfg.mlflow_tracking_uri,
                mlflow_run_id=plan.run_id,
            )
            job_path = work / f"job-{stage}.json"
            job.save(job_path)
            plan.stages.append(
                {
                    "name": stage,
                    "job": str(job_path),
                    "output_dir": job.output_dir,
                    "checkpoint_dir": job.checkpoint_dir,
                    "log": str(work / f"train-{stage}.log"),
                    "rows": len(frame),
                    "replay_rows": int((frame["source"] == "replay").sum()),
                    "context_rows": int((frame["source"] == "context").sum()),
                    "loss_tokens": (info.get("loss_tokens") or loss_tokens(rows)) if stage == "sft" else None,
                    "team_loss_tokens": info.get("team_loss_tokens", _team_loss_tokens(rows))
                    if stage == "sft"
                    else None,
                    "recipe": info or None,
                    "dropped": dropped,
                    "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
                }
            )
        plan.save()
        _log_plan(cfg, client, plan, gold, procs)
    except BaseException as exc:
        client.set_terminated(plan.run_id, "FAILED")
        client.set_tag(plan.run_id, "echo.error", str(exc)[:500])
        shutil.rmtree(work, ignore_errors=True)
        raise
    return plan


def _team_loss_tokens(rows: list[dict[str, Any]]) -> int:
    """Loss tokens of the rows that are not public code (the rows recipe)."""
    return loss_tokens([r for r in rows if r.get("source") not in ("replay", "public")])


def _optional_gold(
    lake: str, table: str, dates: list[str], progress: Callable[[str], None]
) -> pd.DataFrame | None:
    """``table``'s rows for ``dates``, or None where a date lacks it (weights then see every
    request as accepted as shown, and there are no negatives: said, not silent)."""
    try:
        return read_gold(lake, table, dates)
    except TrainError as exc:
        progress(
            f"warning: no gold/{table} for the window ({exc}); every request weighs as accepted as shown"
        )
        return None


def _log_plan(cfg: EchoConfig, client, plan: TrainPlan, gold: dict[str, pd.DataFrame], procs: int) -> None:
    """Config, data lineage (gold manifests as dataset inputs), git commit and parent version."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag, Param, RunTag

    from echo_lib.training.bootstrap import git_commit

    params = {f"learn.{k}": v for k, v in cfg.learn.model_dump().items()}
    params.update({f"train.{k}": v for k, v in cfg.train.model_dump().items() if k != "hostfile"})
    params.update({"train.num_procs": procs, "objective": plan.objective, "gold.dates": ",".join(plan.dates)})
    for stage in plan.stages:
        job = json.loads(Path(stage["job"]).read_text())
        params.update(
            {f"{stage['name']}.{k}": job[k] for k in ("max_steps", "micro_batch_size", "learning_rate")}
        )
        params.update(
            {f"{stage['name']}.rows": stage["rows"], f"{stage['name']}.replay_rows": stage["replay_rows"]}
        )
    manifests = {dt: read_manifest(cfg.lake_uri, dt) for dt in plan.dates}
    tags = {
        "mlflow.source.git.commit": git_commit(cfg.home) or "unknown",
        "echo.parent_version": plan.parent_version,
        "echo.gold_dates": ",".join(plan.dates),
        "echo.gold_manifests": ",".join(m["sha256"] for m in manifests.values()),
    }
    client.log_batch(
        plan.run_id,
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    inputs = []
    for stage, frame in gold.items():
        table = GOLD_TABLE[stage]
        digest = hashlib.sha256(
            "|".join(manifests[dt]["datasets"][table]["sha256"] for dt in plan.dates).encode()
        ).hexdigest()[:16]
        dataset = mlflow.data.from_pandas(
            frame.head(1000),  # the schema and a profile; the full rows stay in the lake
            source=f"{cfg.lake_uri}/gold/{table}",
            name=f"gold/{table}@{plan.dates[0]}..{plan.dates[-1]}",
            digest=digest,
        )
        inputs.append(
            DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])
        )
    client.log_inputs(plan.run_id, datasets=inputs)
    client.log_dict(plan.run_id, {dt: m for dt, m in manifests.items()}, "gold_manifests.json")
    client.log_artifact(plan.run_id, str(Path(plan.work) / "plan.json"))


def _stage_summary(stage: dict[str, Any]) -> dict[str, Any]:
    report = json.loads((Path(stage["checkpoint_dir"]) / "reports" / "rank0.json").read_text())
    keep = (
        "objective",
        "steps",
        "rows",
        "tokens",
        "tokens_per_s",
        "loss_tokens",
        "prompt_tokens",
        "loss_tokens_per_s",
        "final_loss",
        "train_loss",
        "seconds",
        "resumed",
    )
    return {
        "name": stage["name"],
        "replay_rows": stage["replay_rows"],
        "context_rows": stage.get("context_rows", 0),
        "loss_tokens_per_epoch": stage.get("loss_tokens"),
        "team_loss_tokens": stage.get("team_loss_tokens"),
        **{k: report.get(k) for k in keep},
    }


def _register(cfg: EchoConfig, client, plan: TrainPlan, model_dir: str, policy=None):
    from echo_lib.core import registry
    from echo_lib.training import lifecycle
    from echo_lib.training.calibrate import calibration_metrics, policy_tags

    summaries = [_stage_summary(s) for s in plan.stages]
    metrics: dict[str, float | None] = {}
    for s in summaries:
        prefix = f"{s['name']}." if len(summaries) > 1 else ""
        metrics.update(
            {
                f"{prefix}summary.{k}": s[k]
                for k in (
                    "final_loss",
                    "tokens",
                    "tokens_per_s",
                    "loss_tokens",
                    "loss_tokens_per_s",
                    "seconds",
                )
            }
        )
    if policy is not None:
        metrics.update(calibration_metrics(policy))
    rows = sum(s["rows"] for s in summaries)
    return lifecycle.publish(
        cfg,
        client,
        plan.run_id,
        model_dir=model_dir,
        metrics=metrics,
        logs=[stage["log"] for stage in plan.stages],
        tags={
            "echo.stage": "train",
            "echo.objective": plan.objective,
            "echo.parent": plan.parent_version,
            "echo.preset": plan.preset,
            "echo.gold_dates": ",".join(plan.dates),
            "echo.train_rows": str(rows),
            "echo.control": str(plan.control).lower(),
            "echo.baseline": plan.baseline or "none",
            **(policy_tags(policy) if policy is not None else {}),
        },
        description=(
            f"equal-compute baseline ({plan.baseline or 'public'}): {plan.objective} from v{plan.parent_version} "
            f"on {rows:,} rows of {'public' if plan.baseline in (None, 'public') else 'team'} code, the compute "
            f"gold {plan.dates[0]}..{plan.dates[-1]} gave; never promoted."
            if plan.control
            else f"{plan.objective} from v{plan.parent_version} on "
            + (f"the {plan.baseline} baseline's data" if plan.baseline else "gold")
            + f" {plan.dates[0]}..{plan.dates[-1]} ({rows:,} rows incl. replay)."
        ),
        alias=BASELINES[plan.baseline or "public"][0] if plan.control else registry.CHALLENGER,
    )
