"""Benchmark the completion engine at several batch sizes on the same requests.

    python bench/bench_engine.py                       # random "default"-preset model (4M params)
    python bench/bench_engine.py --model DIR           # a trained HF model directory
    python bench/bench_engine.py --requests 64 --batch-sizes 1,8,32 --json

Requests are prefixes cut from real standard-library files at random positions inside random lines
(fixed seed), so some end mid-identifier (token healing) and some at line starts. Every batch size
decodes the same requests; the proposals must be identical across batch sizes (greedy decoding),
and the script exits non-zero if they are not.

``--world`` runs the simulated world's sessions (team repos' experience files) instead, side by
side in one process: the plain engine and the prefix-cache engine at each ``--window-steps`` step,
reporting world events/s, completions/s and their ratios to today's engine (plain, step 1), then
completions/s with the cache at batch 1 and batch 32 replaying the world's own request stream. The
proposals of plain and cached runs at the same step must agree (else exit non-zero):

    python bench/bench_engine.py --world --model DIR --sessions 32 --window-steps 1,32,64 --threads 1

A random model proposes text of arbitrary length (it rarely emits a newline, so most requests run
to ``--max-new-tokens``); a trained model stops at line ends, which is where dropping finished rows
from the batch pays off. Use ``--model`` for numbers that resemble serving.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import sysconfig
import time
from datetime import date
from pathlib import Path

STDLIB_FILES = [
    "argparse.py",
    "ast.py",
    "calendar.py",
    "configparser.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "logging/__init__.py",
    "pathlib.py",
    "pprint.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "tarfile.py",
    "textwrap.py",
    "threading.py",
    "tokenize.py",
    "typing.py",
    "uuid.py",
    "zipfile.py",
    "json/decoder.py",
    "json/encoder.py",
    "collections/__init__.py",
]


def stdlib_sources() -> dict[str, str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = {}
    for name in STDLIB_FILES:
        path = root / name
        if path.is_file():
            found[name] = path.read_text(encoding="utf-8", errors="replace")
    if not found:
        raise SystemExit(f"no standard-library sources found under {root}")
    return found


def make_prefixes(sources: dict[str, str], n: int, seed: int, max_chars: int) -> list[str]:
    """``n`` prefixes ending at a random column of a random non-blank line of a random file."""
    rng = random.Random(seed)
    names = sorted(sources)
    prefixes = []
    while len(prefixes) < n:
        text = sources[rng.choice(names)]
        lines = text.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        if not lines[i].strip():
            continue
        body = lines[i].rstrip("\n")
        column = rng.randint(0, len(body))
        before = "".join(lines[:i]) + body[:column]
        prefixes.append(before[-max_chars:])
    return prefixes


def build_random_model(sources: dict[str, str], vocab: int):
    import torch
    from transformers import LlamaForCausalLM

    from echo_lib.agent.presets import build_model_config, get_preset
    from echo_lib.agent.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(list(sources.values()), vocab)
    torch.manual_seed(0)
    model = LlamaForCausalLM(build_model_config(get_preset("default"), tokenizer))
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model directory (default: random 'default'-preset model)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--mode", choices=["line", "lines"], default="line")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds over all batch sizes; best kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix-chars", type=int, default=4000, help="characters of context per request")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--world", action="store_true", help="world traffic: plain vs prefix-cache engine")
    parser.add_argument("--sessions", type=int, default=32, help="--world: sessions to simulate")
    parser.add_argument("--window-steps", default="1,32", help="--world: prompt_window_step values")
    parser.add_argument(
        "--drafts", default="0", help="--world: draft_tokens values tried with the cache (0 = no drafts)"
    )
    parser.add_argument("--step-tokens", type=int, default=32, help="--world: EngineSettings.step_tokens")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="--world: one run (first step, first drafts value, cache on) timing every model forward",
    )
    parser.add_argument(
        "--replay-calls", type=int, default=40, help="--world: engine calls replayed at bs 1/32"
    )
    args = parser.parse_args(argv)
    if args.world:
        return world_main(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]

    import torch

    from echo_lib.agent.engine import CompletionEngine, EngineSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    sources = stdlib_sources()
    prefixes = make_prefixes(sources, args.requests, args.seed, args.prefix_chars)

    t0 = time.perf_counter()
    if args.model:
        base = CompletionEngine.load(args.model)
        model, tokenizer, model_desc = base.model, base.tokenizer, args.model
    else:
        model, tokenizer = build_random_model(sources, 4096)
        model_desc = "random, preset 'default'"
    setup_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())

    engines = {
        bs: CompletionEngine(
            model,
            tokenizer,
            EngineSettings(max_new_tokens=args.max_new_tokens, mode=args.mode, batch_size=bs),
        )
        for bs in batch_sizes
    }
    best: dict[int, float] = {}
    tokens = 0
    reference = None
    mismatches = 0
    load_before = os.getloadavg()[0]
    # Rounds interleave the batch sizes, so a burst of load from elsewhere does not hit just one of them.
    for _round in range(max(args.repeats, 1)):
        for bs, engine in engines.items():
            engine.complete(prefixes[: min(bs, len(prefixes))])  # warm-up: allocator, kernels
            start = time.perf_counter()
            proposals = engine.complete(prefixes)
            elapsed = time.perf_counter() - start
            best[bs] = min(best.get(bs, elapsed), elapsed)
            if reference is None:
                reference = proposals
                tokens = sum(p.num_tokens for p in proposals)
            else:
                for a, b in zip(reference, proposals, strict=True):
                    if (
                        a.text != b.text
                        or a.num_tokens != b.num_tokens
                        or abs(a.confidence - b.confidence) > 1e-5
                    ):
                        mismatches += 1
    results = [
        {
            "batch_size": bs,
            "seconds": round(best[bs], 3),
            "completions_per_s": round(len(prefixes) / best[bs], 2),
            "tokens_per_s": round(tokens / best[bs], 1),
            "speedup": round(best[batch_sizes[0]] / best[bs], 2),
        }
        for bs in batch_sizes
    ]

    lengths = [p.num_tokens for p in reference or []]
    report = {
        "model": model_desc,
        "parameters": params,
        "requests": len(prefixes),
        "max_new_tokens": args.max_new_tokens,
        "mode": args.mode,
        "mean_tokens_per_completion": round(sum(lengths) / max(len(lengths), 1), 1),
        "completions_at_cap": sum(n >= args.max_new_tokens for n in lengths),
        "identical_across_batch_sizes": mismatches == 0,
        "mismatches": mismatches,
        "setup_s": round(setup_s, 1),
        "repeats": max(args.repeats, 1),
        "generated_tokens": tokens,
        "machine": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(
            f"model: {model_desc} ({params / 1e6:.1f}M params), {len(prefixes)} requests, mode={args.mode}, "
            f"max_new_tokens={args.max_new_tokens}"
        )
        print(
            f"machine: torch {m['torch']}, {m['torch_threads']} torch threads, {m['cpu_count']} CPUs, "
            f"{m['processor']}, python {m['python']}, 1-min load {m['loadavg_1m_before_after']} (before, after)"
        )
        print(
            f"mean tokens/completion: {report['mean_tokens_per_completion']} "
            f"({report['completions_at_cap']} of {len(prefixes)} hit the cap)"
        )
        print(
            f"best of {report['repeats']} interleaved rounds; speedup is relative to batch size {batch_sizes[0]}"
        )
        print(f"{'batch':>6} {'seconds':>9} {'compl/s':>9} {'tokens/s':>10} {'speedup':>8}")
        for r in results:
            print(
                f"{r['batch_size']:>6} {r['seconds']:>9.2f} {r['completions_per_s']:>9.2f} "
                f"{r['tokens_per_s']:>10.1f} {r['speedup']:>7.2f}x"
            )
        print(
            "outputs identical across batch sizes: "
            + ("yes" if mismatches == 0 else f"NO ({mismatches} differ)")
        )
    return 0 if mismatches == 0 else 1


def world_main(args) -> int:
    """Plain and prefix-cache engines on the same world sessions, in this process."""
    import torch

    from echo_lib.agent.engine import CompletionEngine, EngineSettings
    from echo_lib.core.config import load_config
    from echo_lib.world.behaviour import BehaviourParams
    from echo_lib.world.delivery import DeliveryParams
    from echo_lib.world.runner import world_files
    from echo_lib.world.simulate import plan_day, run_sessions

    if not args.model:
        raise SystemExit("--world needs --model (a trained model: a random one never stops at line ends)")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config().config
    behaviour = BehaviourParams()
    specs = plan_day(
        world_files(cfg, "experience"),
        date(2000, 1, 1),
        args.sessions,
        args.seed,
        behaviour,
        DeliveryParams.none(),
    )
    base = CompletionEngine.load(args.model)
    load_before = os.getloadavg()[0]

    def engine(step: int, cache: bool, batch: int = 32, drafts: int = 0) -> CompletionEngine:
        settings = EngineSettings(
            max_new_tokens=args.max_new_tokens,
            batch_size=batch,
            prompt_window_step=step,
            prefix_cache=cache,
            draft_tokens=drafts,
            step_tokens=args.step_tokens,
        )
        return CompletionEngine(base.model, base.tokenizer, settings, base.model_version)

    class Recording:
        """The engine as the world sees it, keeping each call's prefixes and proposals."""

        def __init__(self, inner: CompletionEngine):
            self.inner, self.model_version, self.calls = inner, inner.model_version, []

        def complete(self, prefixes, suffixes=None):
            proposals = self.inner.complete(prefixes, suffixes)
            self.calls.append((list(prefixes), proposals))
            return proposals

    def world(step: int, cache: bool, drafts: int = 0) -> dict:
        recording = Recording(engine(step, cache, drafts=drafts))
        start = time.perf_counter()
        results = run_sessions(specs, recording, behaviour, concurrency=cfg.world.concurrency)
        seconds = time.perf_counter() - start
        requests = sum(len(p) for p, _ in recording.calls)
        store = recording.inner.prefix_store
        return {
            "step": step,
            "prefix_cache": cache,
            "draft_tokens": drafts,
            "seconds": round(seconds, 2),
            "events": sum(len(r.events) for r in results),
            "events_per_s": round(sum(len(r.events) for r in results) / seconds, 1),
            "completions": requests,
            "completions_per_s": round(requests / seconds, 1),
            "reused_token_share": round(store.reused_tokens / max(store.prompt_tokens, 1), 3)
            if store
            else 0.0,
            "_calls": recording.calls,
        }

    def differ(a: list, b: list) -> int:
        pa = [p for _, ps in a for p in ps]
        pb = [p for _, ps in b for p in ps]
        if len(pa) != len(pb):
            return max(len(pa), len(pb))
        return sum(
            x.text != y.text or abs(x.confidence - y.confidence) > 1e-5 for x, y in zip(pa, pb, strict=True)
        )

    if args.profile:
        return profile_world(args, specs, behaviour, cfg, engine)

    runs, mismatches = [], 0
    draft_values = [int(k) for k in args.drafts.split(",") if k.strip()]
    for step in [int(k) for k in args.window_steps.split(",") if k.strip()]:
        plain = world(step, False)
        runs.append(plain)
        for drafts in draft_values:
            other = world(step, True, drafts)
            other["mismatches_vs_plain"] = differ(plain["_calls"], other["_calls"])
            mismatches += other["mismatches_vs_plain"]
            runs.append(other)
    today = runs[0]  # plain, the first step (1 = today's engine)
    for r in runs:
        r["events_ratio_vs_today"] = round(r["events_per_s"] / today["events_per_s"], 2)

    # batch 1 vs batch 32 on the world's own requests, with the cache, at the last step
    calls = [prefixes for prefixes, _ in runs[-1]["_calls"][: args.replay_calls]]
    replay = {}
    for batch in (1, 32):
        eng = engine(runs[-1]["step"], True, batch, runs[-1]["draft_tokens"])
        start = time.perf_counter()
        for prefixes in calls:
            eng.complete(prefixes)
        replay[batch] = round(sum(map(len, calls)) / (time.perf_counter() - start), 1)
    for r in runs:
        del r["_calls"]
    report = {
        "model": args.model,
        "sessions": len(specs),
        "concurrency": cfg.world.concurrency,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
        "replay": {
            "step": runs[-1]["step"],
            "draft_tokens": runs[-1]["draft_tokens"],
            "calls": len(calls),
            "requests": sum(map(len, calls)),
        }
        | {f"completions_per_s_batch_{b}": v for b, v in replay.items()},
        "mismatches": mismatches,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"model: {args.model}, {len(specs)} sessions, concurrency {cfg.world.concurrency}, "
            f"{report['torch_threads']} torch threads, {report['cpu_count']} CPUs, "
            f"1-min load {report['loadavg_1m_before_after']} (before, after)"
        )
        print(
            f"{'step':>5} {'cache':>6} {'drafts':>6} {'seconds':>8} {'events/s':>9} {'compl/s':>8} {'vs today':>9} {'reused':>7}"
        )
        for r in runs:
            print(
                f"{r['step']:>5} {'yes' if r['prefix_cache'] else 'no':>6} {r['draft_tokens']:>6} {r['seconds']:>8.1f} "
                f"{r['events_per_s']:>9.1f} {r['completions_per_s']:>8.1f} {r['events_ratio_vs_today']:>8.2f}x "
                f"{r['reused_token_share']:>7.0%}"
            )
        rp = report["replay"]
        print(
            f"replay of {rp['calls']} world calls ({rp['requests']} requests), cache on, step {rp['step']}, "
            f"drafts {rp['draft_tokens']}: "
            f"batch 1 {rp['completions_per_s_batch_1']} compl/s, batch 32 {rp['completions_per_s_batch_32']} "
            f"compl/s ({rp['completions_per_s_batch_32'] / rp['completions_per_s_batch_1']:.1f}x)"
        )
        print(
            "proposals identical to the plain engine's: "
            + ("yes" if mismatches == 0 else f"NO ({mismatches})")
        )
    return 0 if mismatches == 0 else 1


def profile_world(args, specs, behaviour, cfg, engine) -> int:
    """Where one world run's engine time goes: prompt prefill, decoding steps by rows left in the
    batch, and the engine's own Python around the model."""
    from collections import defaultdict

    from echo_lib.world.simulate import run_sessions

    step = int(args.window_steps.split(",")[0])
    drafts = int(args.drafts.split(",")[0])
    eng = engine(step, True, drafts=drafts)
    forwards: list[tuple[bool, int, float]] = []  # (prefill?, rows, seconds)
    model_forward, engine_prefill = eng.model.forward, eng._prefill
    in_prefill = [False]

    def timed(*a, **kw):
        start = time.perf_counter()
        out = model_forward(*a, **kw)
        forwards.append((in_prefill[0], kw["input_ids"].shape[0], time.perf_counter() - start))
        return out

    def prefill(*a, **kw):
        in_prefill[0] = True
        try:
            return engine_prefill(*a, **kw)
        finally:
            in_prefill[0] = False

    engine_seconds = [0.0]

    class Timed:
        model_version = eng.model_version

        def complete(self, prefixes, suffixes=None):
            start = time.perf_counter()
            try:
                return eng.complete(prefixes, suffixes)
            finally:
                engine_seconds[0] += time.perf_counter() - start

    eng.model.forward, eng._prefill = timed, prefill
    start = time.perf_counter()
    try:
        run_sessions(specs, Timed(), behaviour, concurrency=cfg.world.concurrency)
    finally:
        del eng.model.forward
    total = time.perf_counter() - start
    prefills = [f for f in forwards if f[0]]
    buckets: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for _prefill, rows, seconds in (f for f in forwards if not f[0]):
        key = "1-3" if rows <= 3 else "4-15" if rows <= 15 else "16-32"
        buckets[key][0] += 1
        buckets[key][1] += seconds
    in_model = sum(f[2] for f in forwards)
    print(
        f"{len(specs)} sessions, step {step}, drafts {drafts}: world {total:.1f} s, engine {engine_seconds[0]:.1f} s"
    )
    print(f"{'part':<28} {'forwards':>9} {'seconds':>8} {'share of engine':>16} {'ms each':>8}")
    parts = [("prefill (prompt tokens)", len(prefills), sum(f[2] for f in prefills))]
    parts += [(f"decoding, {k} rows left", int(v[0]), v[1]) for k, v in sorted(buckets.items())]
    parts += [("engine Python around the model", 0, engine_seconds[0] - in_model)]
    for name, n, seconds in parts:
        each = f"{1000 * seconds / n:.1f}" if n else "-"
        print(f"{name:<28} {n:>9} {seconds:>8.1f} {seconds / engine_seconds[0]:>16.0%} {each:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
