"""The training entry point: one module that trains v0 and, later, every refined version.

Run it through the ``deepspeed`` launcher (``echoctl bootstrap`` / ``echoctl train`` write the job
file and pick the flags from config)::

    # CPU, 2 ranks with gloo (tests and the demo here)
    OMP_NUM_THREADS=1 deepspeed --num_accelerators 2 --master_port 29500 --module echo_lib.training.rank --job job.json
    # one node, 8 GPUs, bf16, ZeRO from the job's zero_stage
    deepspeed --num_gpus 8 --module echo_lib.training.rank --job job.json
    # several nodes
    deepspeed --hostfile /etc/deepspeed/hostfile --module echo_lib.training.rank --job job.json

Only rank 0 logs (to the MLflow run named in the job) and writes reports; every rank takes part
in saving, because ZeRO-3 gathers the weights collectively.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DS_CONFIG_DIR = Path(__file__).resolve().parent / "ds_configs"


@dataclass
class TrainJob:
    """Everything one training run needs; written to JSON by the caller, read by every rank."""

    data_path: str = field(metadata={"help": "token blocks: .npy of shape [N, context_length]"})
    tokenizer_path: str = field(metadata={"help": "HF tokenizer directory"})
    output_dir: str = field(metadata={"help": "final model directory (safetensors + tokenizer)"})
    checkpoint_dir: str = field(metadata={"help": "DeepSpeed/Trainer checkpoints (resume from here)"})
    preset: str = field(default="default", metadata={"help": "model size preset (echo_lib.agent.presets)"})
    objective: Literal["clm", "blocks", "sft", "dpo", "kto"] = field(
        default="clm",
        metadata={
            "help": "clm: next-token prediction on token blocks (.npy); blocks: weighted next-token loss on "
            "a Parquet of input_ids/loss_weights/negative_ids rows (echo_lib.training.recipe); sft / dpo / "
            "kto: TRL's trainers on a Parquet of prompt/completion, prompt/chosen/rejected or "
            "prompt/completion/label rows"
        },
    )
    unlikelihood: float = field(
        default=0.0, metadata={"help": "blocks: weight of the rejected proposals' unlikelihood term"}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO temperature of the implicit reward"})
    max_length: int | None = field(
        default=None, metadata={"help": "longest prompt+completion in tokens; None = the model's context"}
    )
    init_model: str | None = field(
        default=None, metadata={"help": "warm-start directory; None builds from the preset"}
    )
    max_steps: int = field(default=100, metadata={"help": "optimizer steps"})
    micro_batch_size: int = field(default=8, metadata={"help": "sequences per rank per micro-step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate (cosine schedule)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and dropout"})
    zero_stage: int = field(default=2, metadata={"help": "DeepSpeed ZeRO stage 0-3 (ds_configs/zeroN.json)"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None = when supported"})
    use_cpu: bool = field(default=True, metadata={"help": "train on CPU ranks (gloo); False for GPUs"})
    torch_threads: int = field(default=1, metadata={"help": "torch intra-op threads per rank"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every K steps"})
    logging_steps: int = field(default=10, metadata={"help": "log metrics every K steps"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the last checkpoint in checkpoint_dir"}
    )
    mlflow_tracking_uri: str | None = field(default=None, metadata={"help": "where rank 0 logs"})
    mlflow_run_id: str | None = field(default=None, metadata={"help": "existing run rank 0 logs into"})
    metric_prefix: str = field(
        default="", metadata={"help": "prefix of logged metric names (stage of a sequence)"}
    )

    def __post_init__(self) -> None:
        from echo_lib.agent.presets import get_preset

        get_preset(self.preset)  # raises with the list of presets
        problems = []
        if self.max_steps <= 0:
            problems.append("max_steps must be positive")
        if self.micro_batch_size <= 0 or self.grad_accum <= 0:
            problems.append("micro_batch_size and grad_accum must be positive")
        if not 0 < self.learning_rate < 1:
            problems.append("learning_rate must be in (0, 1)")
        if self.objective not in ("clm", "blocks", "sft", "dpo", "kto"):
            problems.append(f"objective must be clm, blocks, sft, dpo or kto, not {self.objective!r}")
        if self.unlikelihood < 0:
            problems.append("unlikelihood must be >= 0")
        if self.objective in ("dpo", "kto") and not self.init_model:
            problems.append(f"{self.objective} refines an existing model: init_model is required")
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append("zero_stage must be 0, 1, 2 or 3")
        if self.warmup_steps < 0 or self.save_steps <= 0 or self.logging_steps <= 0:
            problems.append("warmup_steps >= 0, save_steps > 0 and logging_steps > 0")
        if problems:
            raise ValueError("invalid training job: " + "; ".join(problems))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainJob:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown training job keys {unknown}")
        return cls(**data)


def deepspeed_config(stage: int) -> dict[str, Any]:
    """The ZeRO config kept as data, with "auto" values the HF Trainer fills in."""
    return json.loads((DS_CONFIG_DIR / f"zero{stage}.json").read_text())


def bf16_supported(use_cpu: bool) -> bool:
    import torch

    if not use_cpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except RuntimeError:
        return False


def param_digest(model) -> str:
    """SHA-256 over every parameter's bytes (fp32), in name order: equal digests = equal weights."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TokenBlocks:
    """A map-style dataset over a memory-mapped [N, T] array of token ids (labels = inputs)."""

    def __init__(self, path: str) -> None:
        import numpy as np

        self.blocks = np.load(path, mmap_mode="r")
        if self.blocks.ndim != 2 or len(self.blocks) == 0:
            raise ValueError(
                f"{path}: expected a non-empty [N, T] array of token ids, got shape {self.blocks.shape}"
            )

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        ids = torch.from_numpy(self.blocks[index].astype("int64"))
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


class TokenCounter:
    """Wraps a data collator to count, on this rank, the tokens each batch carries and how many of
    them the loss sees (labels != -100). A completion-only loss spends most of a step's compute on
    masked prompt tokens: tokens/s alone would hide that, so both are reported."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.tokens = 0
        self.loss_tokens = 0
        self.last = (0, 0)  # the newest batch's (tokens, loss tokens)

    def __call__(self, features):
        batch = self.collate(features)
        labels, mask = batch.get("labels"), batch.get("attention_mask")
        if labels is not None:
            tokens = int(mask.sum()) if mask is not None else labels.numel()
            # causal LM: the first label of each row is never predicted
            loss_tokens = int((labels[:, 1:] != -100).sum())
            self.tokens += tokens
            self.loss_tokens += loss_tokens
            self.last = (tokens, loss_tokens)
        return batch

    def trained(self) -> tuple[int, int]:
        """(tokens, loss tokens) of the batches trained so far: accelerate's loader collates one
        batch ahead of the step that uses it (measured: a resume counted it twice)."""
        return self.tokens - self.last[0], self.loss_tokens - self.last[1]


PROGRESS_PREFIX = "train: step "  # the launcher forwards lines carrying it to the console


def progress_line(step: int, total: int, metrics: dict[str, float], elapsed: float, done: int) -> str:
    """One line per logging step (a log file stays readable, unlike a redrawn bar): where training
    is, its loss, its throughput in all tokens and in loss tokens, and when it will end."""
    parts = [f"{step}/{total}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.3f}")
    if "tokens_per_s" in metrics:
        parts.append(f"{metrics['tokens_per_s']:,.0f} tokens/s")
    if "loss_tokens_per_s" in metrics:
        share = metrics.get("loss_token_share")
        parts.append(
            f"{metrics['loss_tokens_per_s']:,.0f} loss tokens/s" + (f" ({share:.0%})" if share else "")
        )
    if done > 0 and total > step:
        parts.append(f"eta {elapsed / done * (total - step) / 60:.1f} min")
    return PROGRESS_PREFIX + ", ".join(parts)


def _all_ranks_sum(values: list[int]) -> list[int]:
    """Sum per-rank counters over the process group (a no-op without one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def _mlflow_callback(job: TrainJob, tokens_per_step: int, counter: TokenCounter | None = None):
    from transformers import TrainerCallback

    class MlflowRank0(TrainerCallback):
        """Log numeric metrics to the job's MLflow run, from rank 0 only (no run per rank)."""

        def __init__(self) -> None:
            self.client = None
            self.last = (time.perf_counter(), 0, 0, 0, 0)
            self.start_tokens = 0
            self.history: list[dict[str, float]] = []
            self.start_step = 0
            self.started = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and job.mlflow_run_id:
                import mlflow

                self.client = mlflow.MlflowClient(tracking_uri=job.mlflow_tracking_uri)
            seen = state.num_input_tokens_seen or tokens_per_step * state.global_step
            counted = (counter.tokens, counter.loss_tokens) if counter else (0, 0)
            self.last = (time.perf_counter(), state.global_step, seen, *counted)
            self.start_step, self.start_tokens = state.global_step, seen
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            now, step = time.perf_counter(), state.global_step
            metrics = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and k != "epoch"}
            seen = state.num_input_tokens_seen or tokens_per_step * step
            counted = (counter.tokens, counter.loss_tokens) if counter else (0, 0)
            if step > self.last[1]:
                elapsed = now - self.last[0]
                metrics["tokens_per_s"] = (seen - self.last[2]) / elapsed
                if counter and counted[0] > self.last[3]:
                    # this rank's batches, scaled by the ranks: an estimate (the final report sums them)
                    world = int(os.environ.get("WORLD_SIZE", 1))
                    metrics["loss_tokens_per_s"] = (counted[1] - self.last[4]) * world / elapsed
                    metrics["loss_token_share"] = (counted[1] - self.last[4]) / (counted[0] - self.last[3])
            moved = step > self.last[1]
            self.last = (now, step, seen, *counted)
            self.history.append({"step": step, **metrics})
            if moved:  # not the end-of-training summary logged at the same step
                print(
                    progress_line(step, state.max_steps, metrics, now - self.started, step - self.start_step),
                    flush=True,
                )
            if self.client is not None:
                from mlflow.entities import Metric

                stamp = int(time.time() * 1000)
                batch = [
                    Metric(key=job.metric_prefix + k, value=v, timestamp=stamp, step=step)
                    for k, v in metrics.items()
                ]
                self.client.log_batch(job.mlflow_run_id, metrics=batch)

    return MlflowRank0()


def run(job: TrainJob) -> dict[str, Any]:
    """Train according to ``job`` inside an already-launched distributed process group."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, set_seed

    from echo_lib.agent.presets import build_model_config, get_preset
    from echo_lib.agent.tokenizer import load_tokenizer

    torch.set_num_threads(job.torch_threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    preset = get_preset(job.preset)
    set_seed(job.seed)
    tokenizer = load_tokenizer(job.tokenizer_path)
    if job.init_model:
        model = AutoModelForCausalLM.from_pretrained(job.init_model, dtype=torch.float32)
    else:
        model = LlamaForCausalLM(build_model_config(preset, tokenizer))
    initial_digest = param_digest(model)
    bf16 = bf16_supported(job.use_cpu) if job.bf16 is None else job.bf16
    common = dict(
        output_dir=job.checkpoint_dir,
        max_steps=job.max_steps,
        per_device_train_batch_size=job.micro_batch_size,
        gradient_accumulation_steps=job.grad_accum,
        learning_rate=job.learning_rate,
        warmup_steps=job.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=job.weight_decay,
        max_grad_norm=1.0,
        logging_steps=job.logging_steps,
        save_steps=job.save_steps,
        save_total_limit=2,
        bf16=bf16,
        use_cpu=job.use_cpu,
        deepspeed=deepspeed_config(job.zero_stage),
        report_to=[],
        seed=job.seed,
        data_seed=job.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,  # the callback prints one progress line per logging step (rank 0)
        log_level="warning",
    )
    if job.objective == "clm":
        dataset = TokenBlocks(job.data_path)
        tokens_per_step = job.micro_batch_size * job.grad_accum * world * dataset.blocks.shape[1]
    else:
        dataset = _rows_dataset(job)
        tokens_per_step = 0  # variable-length rows: the trainer counts tokens seen instead
        common["include_num_input_tokens_seen"] = "non_padding"
    counter = TokenCounter(None)
    logger = _mlflow_callback(
        job, tokens_per_step, counter if job.objective in ("clm", "blocks", "sft") else None
    )
    trainer = _trainer(job, model, tokenizer, dataset, common, logger)
    counter.collate = trainer.data_collator
    trainer.data_collator = counter
    resume = bool(job.resume and _has_checkpoint(job.checkpoint_dir))
    resumed_counts = _counted_at_checkpoint(job.checkpoint_dir, rank) if resume else (0, 0)
    counter.tokens, counter.loss_tokens = resumed_counts
    trainer.add_callback(_counts_callback(job.checkpoint_dir, rank, counter))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints one readable line per log instead
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    trainer.save_model(job.output_dir)  # collective under ZeRO-3; writes on rank 0 only
    final_model = trainer.model_wrapped.module if hasattr(trainer.model_wrapped, "module") else trainer.model
    state = trainer.state
    seen = state.num_input_tokens_seen or tokens_per_step * state.global_step
    batch_tokens, batch_loss_tokens = _all_ranks_sum([counter.tokens, counter.loss_tokens])
    report = {
        "rank": rank,
        "world_size": world,
        "objective": job.objective,
        "initial_digest": initial_digest,
        "final_digest": param_digest(final_model) if job.zero_stage < 3 else None,
        "train_loss": result.training_loss,
        "final_loss": next((h["loss"] for h in reversed(logger.history) if "loss" in h), None),
        "steps": state.global_step,
        "rows": len(dataset),
        "tokens": int(seen - logger.start_tokens),
        "seconds": seconds,
        "bf16": bf16,
        "resumed": resume,
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": logger.history,
    }
    report["tokens_per_s"] = report["tokens"] / seconds if seconds > 0 else None
    reports = Path(job.checkpoint_dir) / "reports"
    if batch_tokens:  # clm, blocks and sft batches carry labels; all ranks
        # the counter started from the checkpoint's counts: the whole run's supervision, every launch
        report["loss_tokens"] = batch_loss_tokens
        report["prompt_tokens"] = batch_tokens - batch_loss_tokens
        launch = batch_loss_tokens - _all_ranks_sum([resumed_counts[1]])[0]
        report["loss_tokens_per_s"] = launch / seconds if seconds > 0 else None
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    if rank == 0:
        tokenizer.save_pretrained(job.output_dir)
    return report


def _counts_path(checkpoint_dir: str, rank: int, step: int) -> Path:
    """Beside the checkpoint's own files, so it rotates with them."""
    return Path(checkpoint_dir) / f"checkpoint-{step}" / f"echo-counted-rank{rank}.json"


def _counted_at_checkpoint(checkpoint_dir: str, rank: int) -> tuple[int, int]:
    """(tokens, loss tokens) this rank had trained when the checkpoint a resume starts from was
    saved (the Trainer resumes from ``get_last_checkpoint`` too): earlier launches' steps count."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(checkpoint_dir)
    path = _counts_path(checkpoint_dir, rank, int(last.rsplit("-", 1)[-1])) if last else None
    if path is None or not path.is_file():
        print(
            f"warning: {last} has no token counts; the run's loss tokens count this launch only", flush=True
        )
        return 0, 0
    counted = json.loads(path.read_text())
    return int(counted["tokens"]), int(counted["loss_tokens"])


def _counts_callback(checkpoint_dir: str, rank: int, counter: TokenCounter):
    from transformers import TrainerCallback

    class CountsAtSave(TrainerCallback):
        """Keep what this rank counted with each checkpoint, so a resume adds it."""

        def on_save(self, args, state, control, **kwargs):
            path = _counts_path(checkpoint_dir, rank, state.global_step)
            path.parent.mkdir(parents=True, exist_ok=True)
            tokens, loss_tokens = counter.trained()
            path.write_text(json.dumps({"tokens": tokens, "loss_tokens": loss_tokens}))

    return CountsAtSave()


ROW_COLUMNS = {
    "blocks": ("input_ids", "loss_weights", "negative_ids"),
    "sft": (
        "input_ids",
        "completion_mask",
    ),  # pre-tokenised by echo_lib.training.refine (exact engine prompts)
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}


def _rows_dataset(job: TrainJob):
    """The job's Parquet rows as an in-memory ``datasets.Dataset`` with the objective's columns."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    columns = ROW_COLUMNS[job.objective]
    table = pq.read_table(job.data_path)
    missing = [c for c in columns if c not in table.column_names]
    if missing or table.num_rows == 0:
        raise ValueError(f"{job.data_path}: {job.objective} needs rows with columns {list(columns)}")
    return Dataset(table.select(list(columns)))


def _trainer(job: TrainJob, model, tokenizer, dataset, common: dict[str, Any], logger):
    """The HF Trainer (clm) or TRL trainer (sft/dpo/kto) for ``job``; all run under DeepSpeed."""
    import copy

    from transformers import Trainer, TrainingArguments

    max_length = job.max_length or int(model.config.max_position_embeddings)
    if job.objective == "clm":
        return Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=dataset, callbacks=[logger]
        )
    if job.objective == "blocks":
        from echo_lib.training.weighted import collate_blocks, trainer_class

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return trainer_class()(
            model=model,
            args=TrainingArguments(**common, remove_unused_columns=False),
            train_dataset=dataset,
            data_collator=collate_blocks(pad),
            callbacks=[logger],
            unlikelihood=job.unlikelihood,
        )
    if job.objective == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=max_length, completion_only_loss=True, packing=False)
        return SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[logger]
        )
    # DPO and KTO need a frozen reference: the starting weights (TRL cannot load one by name here)
    reference = copy.deepcopy(model).eval()
    if job.objective == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as TrainerClass
    else:
        from trl import KTOConfig as Config
        from trl import KTOTrainer as TrainerClass
    return TrainerClass(
        model=model,
        ref_model=reference,
        args=Config(**common, beta=job.beta, max_length=max_length),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[logger],
    )


def _has_checkpoint(checkpoint_dir: str) -> bool:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(checkpoint_dir).is_dir() and get_last_checkpoint(checkpoint_dir) is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", required=True, help="training job JSON (see TrainJob)")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    try:
        job = TrainJob.load(args.job)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    run(job)
    _shutdown_process_group()  # only after success: a barrier with a dead peer would hang


def _shutdown_process_group() -> None:
    """Leave the process group together: a rank that exits while its peer still holds the gloo/shm
    communicator can abort at interpreter shutdown ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
