"""``echoctl bootstrap``: train the v0 agent on public code and register it as the champion.

v0 is the "static human data" model: a small causal LM, random init, trained only on public code
(the stdlib by default), never on the team repos it will be deployed in. Echo's job afterwards is
to teach it the team's code from its users' refinements.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_lib.agent.presets import Preset, get_preset
from echo_lib.core.config import EchoConfig
from echo_lib.world import corpus

TOKENIZER_TRAIN_CHARS = 4_000_000  # BPE merges stabilise well before this on code; keeps training under ~2 s


class BootstrapError(RuntimeError):
    """Bootstrap cannot run; nothing was registered."""


@dataclass
class BootstrapResult:
    status: str  # "registered" or "exists"
    version: str
    run_id: str | None = None
    report: dict[str, Any] | None = None
    seconds: float = 0.0
    data: dict[str, Any] | None = None


def git_commit(home: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(home), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def training_texts(scan: corpus.Scan, max_chars: int) -> list[str]:
    """Public *train* files (never the reserved slice), in a stable order, up to ``max_chars``."""
    files = sorted(scan.select("train"), key=lambda f: (corpus.path_bucket(f.repo, f.rel_path), f.doc_id))
    texts, total = [], 0
    for f in files:
        if total >= max_chars:
            break
        texts.append(f.text)
        total += len(f.text)
    return texts


def pack_blocks(texts: list[str], tokenizer, context_length: int, out_path: Path) -> dict[str, int]:
    """Tokenise, join documents with EOS, cut into [N, context_length] blocks, save as .npy."""
    import numpy as np

    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // context_length
    if n_blocks == 0:
        raise BootstrapError(f"only {len(ids)} tokens of public code; need at least {context_length}")
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.int32
    blocks = np.asarray(ids[: n_blocks * context_length], dtype=dtype).reshape(n_blocks, context_length)
    np.save(out_path, blocks)
    return {"documents": len(texts), "chars": sum(map(len, texts)), "tokens": len(ids), "blocks": n_blocks}


def bootstrap(
    cfg: EchoConfig,
    *,
    preset_name: str | None = None,
    num_procs: int | None = None,
    max_steps: int | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> BootstrapResult:
    from echo_lib.agent.tokenizer import train_tokenizer
    from echo_lib.core import registry
    from echo_lib.core.tracking import configure_mlflow
    from echo_lib.training import lifecycle
    from echo_lib.training.rank import TrainJob

    start = time.perf_counter()
    configure_mlflow(cfg)
    existing = registry.version_by_alias(cfg, registry.CHAMPION)
    if existing is not None and not force:
        return BootstrapResult("exists", str(existing.version), existing.run_id)

    preset: Preset = get_preset(preset_name or cfg.train.preset)
    progress(f"scanning public code for preset '{preset.name}' ...")
    public = corpus.scan(corpus.public_repos(cfg), cfg)
    team = corpus.scan(corpus.team_repos(cfg), cfg)
    texts = training_texts(public, preset.max_train_chars)
    if not texts:
        raise BootstrapError("no public code found to train on; check corpus.public")

    client = registry.client(cfg)
    run_id, work = lifecycle.open_run(
        cfg, client, kind="bootstrap", run_name=f"bootstrap-{preset.name}", tags={}
    )
    with lifecycle.ending(client, run_id, BootstrapError, failures=(BootstrapError, OSError, ValueError)):
        base = cfg.train.base_model
        if base:
            progress(f"starting from {base} (from_pretrained) ...")
            tokenizer = _load_base_tokenizer(base)
            client.set_tag(run_id, "echo.base_model", base)
        else:
            progress(f"training a {preset.vocab_size}-token BPE tokenizer on public code ...")
            tokenizer_texts = training_texts(public, min(TOKENIZER_TRAIN_CHARS, preset.max_train_chars))
            tokenizer = train_tokenizer(tokenizer_texts, preset.vocab_size)
        tokenizer.save_pretrained(work / "tokenizer")
        progress("packing training blocks ...")
        data = pack_blocks(texts, tokenizer, preset.context_length, work / "blocks.npy")

        train_cfg = cfg.train
        procs = num_procs or train_cfg.num_procs
        job = TrainJob(
            data_path=str(work / "blocks.npy"),
            tokenizer_path=str(work / "tokenizer"),
            output_dir=str(work / "model"),
            checkpoint_dir=str(cfg.checkpoint_dir / "bootstrap" / run_id),
            preset=preset.name,
            init_model=base,
            max_steps=max_steps or preset.max_steps,
            micro_batch_size=preset.micro_batch_size,
            grad_accum=preset.grad_accum,
            learning_rate=preset.learning_rate,
            warmup_steps=min(preset.warmup_steps, (max_steps or preset.max_steps) // 2),
            save_steps=preset.save_steps,
            zero_stage=train_cfg.zero_stage,
            use_cpu=train_cfg.num_gpus == 0,
            torch_threads=train_cfg.torch_threads,
            mlflow_tracking_uri=cfg.mlflow_tracking_uri,
            mlflow_run_id=run_id,
        )
        job.save(work / "job.json")
        _log_inputs(client, run_id, cfg, preset, job, procs, public, team, data, work)

        world = (
            procs * cfg.train.num_nodes
            if cfg.train.num_gpus == 0
            else cfg.train.num_gpus * cfg.train.num_nodes
        )
        tokens = job.max_steps * job.micro_batch_size * job.grad_accum * world * preset.context_length
        progress(
            f"training {job.max_steps} steps on {world} rank(s), {tokens:,} tokens (log: {work / 'train.log'}) ..."
        )
        report = lifecycle.run_stage(
            cfg, work / "job.json", work / "train.log", job.checkpoint_dir, num_procs=procs, progress=progress
        )
        summary = {
            k: report[k]
            for k in ("final_loss", "train_loss", "tokens", "tokens_per_s", "parameters", "seconds")
        }
        version = lifecycle.publish(
            cfg,
            client,
            run_id,
            model_dir=work / "model",
            metrics=summary,
            logs=[work / "train.log"],
            tags={
                "echo.base_model": base or "none",
                "echo.stage": "bootstrap",
                "echo.preset": preset.name,
                "echo.parent": "none",
                "echo.public_split_hash": public.split_hash(),
            },
            description=f"v0: {preset.name} preset trained on public code only ({report['tokens']:,} tokens).",
            alias=registry.CHAMPION,
        )
        registry.record_champion_change(
            cfg,
            action="bootstrap",
            from_version=str(existing.version) if existing else None,
            to_version=str(version.version),
            why=f"v0 trained on public code ({preset.name} preset)",
        )
    shutil.rmtree(work / "model", ignore_errors=True)  # the registered copy lives in the artifact store
    return BootstrapResult(
        "registered", str(version.version), run_id, report, time.perf_counter() - start, data
    )


def _load_base_tokenizer(base: str):
    from echo_lib.agent.tokenizer import load_tokenizer

    try:
        return load_tokenizer(base)
    except (OSError, ValueError) as exc:
        raise BootstrapError(f"cannot load train.base_model {base!r}: {str(exc).splitlines()[0]}") from exc


def _log_inputs(client, run_id, cfg, preset, job, procs, public, team, data, work) -> None:
    from mlflow.entities import Param, RunTag

    params = {f"preset.{k}": v for k, v in preset.to_dict().items()}
    params.update(
        {
            "train.max_steps": job.max_steps,
            "train.num_procs": procs,
            "train.zero_stage": job.zero_stage,
            "train.torch_threads": job.torch_threads,
            "train.num_gpus": cfg.train.num_gpus,
            "data.documents": data["documents"],
            "data.tokens": data["tokens"],
            "data.blocks": data["blocks"],
        }
    )
    tags = {
        "echo.public_split_hash": public.split_hash(),
        "echo.team_split_hash": team.split_hash(),
        "mlflow.source.git.commit": git_commit(cfg.home) or "unknown",
    }
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    (work / "corpus.json").write_text(
        json.dumps({"public": public.summary(), "team": team.summary()}, indent=2)
    )
    client.log_artifact(run_id, str(work / "corpus.json"))
    client.log_artifact(run_id, str(work / "job.json"))
