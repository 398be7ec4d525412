"""Weighted next-token loss over token blocks, with an unlikelihood term for rejected proposals.

The ``blocks`` objective of :mod:`echo_lib.training.rank` (rows built by
:mod:`echo_lib.training.recipe`): every token of a block is predicted, each with its own weight;
where a block carries a rejected proposal's diverging token, ``-log(1 - p(token))`` at that
position pushes it down (bounded, unlike a negative log-likelihood, so it cannot blow up). One
forward pass serves both terms, so the negatives cost no compute.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def collate_blocks(pad_id: int):
    """Right-pad a list of block rows into tensors (padding has weight 0 and no negative)."""

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def padded(key: str, fill: float, dtype) -> torch.Tensor:
            return torch.tensor(
                [list(f[key]) + [fill] * (width - len(f[key])) for f in features], dtype=dtype
            )

        ids = padded("input_ids", pad_id, torch.long)
        mask = torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        )
        weights = padded("loss_weights", 0.0, torch.float32)
        labels = torch.where(weights > 0, ids, torch.full_like(ids, IGNORE))  # what the token counter reads
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "loss_weights": weights,
            "negative_ids": padded("negative_ids", IGNORE, torch.long),
        }

    return collate


def weighted_loss(logits, input_ids, weights, negative_ids, unlikelihood: float):
    """(total, weighted cross-entropy, unlikelihood) of one micro-batch; positions are shifted as in
    causal LM training (the logits at t predict token t + 1)."""
    import torch
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    targets, w = input_ids[:, 1:], weights[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    denominator = w.sum().clamp(min=1.0)
    ce = (nll.view_as(w) * w).sum() / denominator
    negatives = negative_ids[:, 1:]
    hit = negatives != IGNORE
    ul = torch.zeros((), dtype=ce.dtype, device=ce.device)
    if unlikelihood > 0 and bool(hit.any()):
        logp = torch.log_softmax(logits[hit], dim=-1).gather(-1, negatives[hit].unsqueeze(-1)).squeeze(-1)
        p = logp.exp().clamp(max=1 - 1e-6)
        ul = -torch.log1p(-p).sum() / denominator
    return ce + unlikelihood * ul, ce.detach(), ul.detach()


def trainer_class():
    """The HF Trainer with the weighted loss (built lazily: no torch at import)."""
    from transformers import Trainer

    class WeightedBlocksTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides by grad_accum

        def __init__(self, *args, unlikelihood: float = 0.0, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.unlikelihood = unlikelihood

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            weights, negatives = inputs.pop("loss_weights"), inputs.pop("negative_ids")
            inputs.pop("labels", None)
            outputs = model(**inputs)
            loss, _, _ = weighted_loss(
                outputs.logits, inputs["input_ids"], weights, negatives, self.unlikelihood
            )
            return (loss, outputs) if return_outputs else loss

    return WeightedBlocksTrainer
