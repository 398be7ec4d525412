"""Proposals that no model made: hand-built ones for behaviour tests, and an oracle for pipelines."""

from __future__ import annotations

import random

from echo_lib.agent.engine import Proposal


def proposal(text: str, confidence: float = 0.9, shown: bool = True) -> Proposal:
    """A proposal exactly as the engine would return it."""
    return Proposal(text=text, confidence=confidence, shown=shown, num_tokens=1)


class Oracle:
    """Proposals built from the real code (exact, close, right start, wrong, hidden)."""

    model_version = "oracle"

    def __init__(self, texts: list[str], seed: int) -> None:
        self.texts, self.rng = texts, random.Random(seed)

    def complete(self, prefixes, suffixes=None):
        return [self._one(p, s) for p, s in zip(prefixes, suffixes, strict=True)]

    def _one(self, prefix: str, suffix: str) -> Proposal:
        text = next(t for t in self.texts if prefix in t and suffix[:200] in t)
        pos = len(prefix) if text.startswith(prefix) else text.index(prefix) + len(prefix)
        real = text[pos : text.index("\n", pos)]
        kind = self.rng.choice(["exact", "close", "start", "wrong", "hidden"])
        if kind == "exact":
            return proposal(real)
        if kind == "close" and len(real) > 4:
            return proposal(real[:-1] + "Z")
        if kind == "start" and len(real) > 3:
            return proposal(real[: len(real) // 2] + " junk")
        if kind == "hidden":
            return proposal(real, 0.01, False)
        return proposal("print('nope')")
