"""Model and training presets: sizes measured to fit a purpose.

``tiny`` is for tests (seconds). ``default`` bootstraps in about ten minutes on 2 CPU cores: a
4M-parameter Llama-style model, because at CPU scale a small model that sees many tokens beats a
big one that sees few (21M parameters trained 3.5x fewer tokens in the same time and was useless).
The ``gpu-*`` presets are for real accelerators.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    context_length: int
    # training budget and optimisation
    max_steps: int
    micro_batch_size: int
    grad_accum: int
    learning_rate: float
    warmup_steps: int
    max_train_chars: int  # public-code characters tokenised for bootstrap (caps data prep time)
    save_steps: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            vocab_size=512,
            hidden_size=64,
            num_layers=2,
            num_heads=2,
            intermediate_size=128,
            context_length=128,
            max_steps=12,
            micro_batch_size=4,
            grad_accum=1,
            learning_rate=3e-3,
            warmup_steps=2,
            max_train_chars=400_000,
            save_steps=6,
        ),
        Preset(
            "default",
            vocab_size=4096,
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            intermediate_size=688,
            context_length=256,
            max_steps=700,
            micro_batch_size=8,
            grad_accum=1,
            learning_rate=2e-3,
            warmup_steps=40,
            max_train_chars=12_000_000,
            save_steps=200,
        ),
        Preset(
            "gpu-small",
            vocab_size=16384,
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            intermediate_size=2048,
            context_length=1024,
            max_steps=20_000,
            micro_batch_size=32,
            grad_accum=1,
            learning_rate=6e-4,
            warmup_steps=500,
            max_train_chars=400_000_000,
            save_steps=1000,
        ),
        Preset(
            "gpu-medium",
            vocab_size=32768,
            hidden_size=1024,
            num_layers=24,
            num_heads=16,
            intermediate_size=2816,
            context_length=2048,
            max_steps=50_000,
            micro_batch_size=16,
            grad_accum=2,
            learning_rate=3e-4,
            warmup_steps=1000,
            max_train_chars=2_000_000_000,
            save_steps=2000,
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def build_model_config(preset: Preset, tokenizer):
    """A Llama-style config with random init; tied embeddings keep small models small."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_heads,
        max_position_embeddings=preset.context_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
