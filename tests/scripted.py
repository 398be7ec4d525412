"""Proposals that no model made: hand-built ones for behaviour tests, and an oracle for pipelines."""

from __future__ import annotations

from echo_lib.engine import Proposal


def proposal(text: str, confidence: float = 0.9, shown: bool = True) -> Proposal:
    """A proposal exactly as the engine would return it."""
    return Proposal(text=text, confidence=confidence, shown=shown, num_tokens=1)
