"""Tokens/s of Echo's DeepSpeed training path against a plain torch loop, same model and data.

    .venv/bin/python bench/bench_train.py [--preset default] [--steps 60] [--threads 1] [--json]

Both sides, one after another in one run, on one process with the same torch threads:

* plain:  a hand-written loop (AdamW, bf16 autocast, cosine-free constant LR, grad clipping);
* deepspeed ZeRO-0 and ZeRO-2: ``echo_lib.training.rank`` under the ``deepspeed`` launcher (HF Trainer +
  DeepSpeed engine), the path every Echo training job takes.

Throughput is taken from logging windows after the first (the first pays for start-up: op loading,
allocator warm-up), so the ratio compares steady-state steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WINDOW = 10  # steps per measured window


def prepare(work: Path, preset_name: str) -> tuple[Path, Path]:
    from echo_lib.agent.presets import get_preset
    from echo_lib.agent.tokenizer import train_tokenizer
    from echo_lib.core.config import load_config
    from echo_lib.training.bootstrap import pack_blocks, training_texts
    from echo_lib.world import corpus

    cfg = load_config().config
    preset = get_preset(preset_name)
    public = corpus.scan(corpus.public_repos(cfg), cfg)
    texts = training_texts(public, 3_000_000)
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    tokenizer.save_pretrained(work / "tokenizer")
    pack_blocks(texts, tokenizer, preset.context_length, work / "blocks.npy")
    return work / "blocks.npy", work / "tokenizer"


def plain_loop(blocks_path: Path, tokenizer_path: Path, preset_name: str, steps: int, threads: int) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM, set_seed

    from echo_lib.agent.presets import build_model_config, get_preset
    from echo_lib.agent.tokenizer import load_tokenizer

    torch.set_num_threads(threads)
    set_seed(0)
    preset = get_preset(preset_name)
    model = LlamaForCausalLM(build_model_config(preset, load_tokenizer(tokenizer_path))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.learning_rate, weight_decay=0.1)
    blocks = np.load(blocks_path, mmap_mode="r")
    rng = np.random.default_rng(0)
    batch = preset.micro_batch_size
    windows, start, losses = [], time.perf_counter(), []
    for step in range(1, steps + 1):
        ids = torch.from_numpy(blocks[rng.integers(0, len(blocks), batch)].astype("int64"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % WINDOW == 0:
            now = time.perf_counter()
            windows.append(WINDOW * batch * blocks.shape[1] / (now - start))
            start = now
    return {"windows_tokens_per_s": windows, "final_loss": losses[-1]}


def deepspeed_path(
    blocks_path: Path, tokenizer_path: Path, preset_name: str, steps: int, threads: int, zero: int, work: Path
) -> dict:
    from echo_lib.agent.presets import get_preset
    from echo_lib.core.config import load_config
    from echo_lib.training.launch import launch
    from echo_lib.training.rank import TrainJob

    preset = get_preset(preset_name)
    cfg = load_config(overrides={"train.torch_threads": threads, "train.zero_stage": zero}).config
    run_dir = work / f"zero{zero}"
    job = TrainJob(
        data_path=str(blocks_path),
        tokenizer_path=str(tokenizer_path),
        output_dir=str(run_dir / "model"),
        checkpoint_dir=str(run_dir / "checkpoints"),
        preset=preset_name,
        max_steps=steps,
        micro_batch_size=preset.micro_batch_size,
        grad_accum=1,
        learning_rate=preset.learning_rate,
        warmup_steps=0,
        zero_stage=zero,
        torch_threads=threads,
        save_steps=10 * steps,  # no checkpoint inside the measured steps
        logging_steps=WINDOW,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    job.save(run_dir / "job.json")
    launch(cfg, run_dir / "job.json", run_dir / "train.log", num_procs=1)
    report = json.loads((run_dir / "checkpoints" / "reports" / "rank0.json").read_text())
    windows = [h["tokens_per_s"] for h in report["history"] if "tokens_per_s" in h and "loss" in h]
    return {"windows_tokens_per_s": windows, "final_loss": report["final_loss"]}


def steady(windows: list[float]) -> float:
    return statistics.median(windows[1:] if len(windows) > 1 else windows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "var" / "cache" / "torch_extensions"))
    with tempfile.TemporaryDirectory(prefix="echo-bench-train-") as tmp:
        work = Path(tmp)
        blocks, tokenizer = prepare(work, args.preset)
        results = {
            "plain torch": plain_loop(blocks, tokenizer, args.preset, args.steps, args.threads),
            "deepspeed zero0": deepspeed_path(
                blocks, tokenizer, args.preset, args.steps, args.threads, 0, work
            ),
            "deepspeed zero2": deepspeed_path(
                blocks, tokenizer, args.preset, args.steps, args.threads, 2, work
            ),
        }
    base = steady(results["plain torch"]["windows_tokens_per_s"])
    for r in results.values():
        r["steady_tokens_per_s"] = steady(r["windows_tokens_per_s"])
        r["overhead_vs_plain"] = base / r["steady_tokens_per_s"] - 1
    out = {
        "preset": args.preset,
        "steps": args.steps,
        "threads": args.threads,
        "processes": 1,
        "results": results,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"preset {args.preset}, {args.steps} steps, 1 process x {args.threads} thread(s), bf16")
    print(f"{'path':<18}{'tokens/s':>10}{'overhead':>10}{'final loss':>12}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['steady_tokens_per_s']:>10,.0f}{r['overhead_vs_plain']:>+10.1%}{r['final_loss']:>12.3f}"
        )


if __name__ == "__main__":
    main()
