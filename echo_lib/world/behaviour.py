"""The parameterised behaviour model of a simulated developer.

Every number here is a documented default (docs/world.md gives the reasoning for each); none is
tuned to make a model look good. The reaction to a proposal depends only on how the proposal
compares with the code the developer was about to write, never on which model produced it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Literal

from rapidfuzz.distance import Levenshtein

Reaction = Literal["accept_exact", "accept_close", "accept_partial", "reject", "abandon"]


@dataclass(frozen=True)
class BehaviourParams:
    # --- typing and time
    chars_per_second: float = 5.0  # ~60 words per minute; per-user speed varies around it
    speed_spread: float = 0.3  # lognormal sigma of per-user speed
    line_pause_s: float = 1.2  # mean pause after finishing a line (exponential)
    think_pause_rate: float = 0.04  # per line: a long think pause
    think_pause_s: float = 20.0  # mean length of a think pause
    review_s: float = 0.6  # time to read a shown proposal before reacting
    # --- when completions are requested
    line_start_trigger_rate: float = 0.9  # at the first non-blank character of a line
    mid_line_trigger_rate: float = 0.3  # after '.', '(', '=', ', ' or 2+ characters of a word
    min_trigger_gap: int = 4  # characters between two triggers on one line
    # --- reacting to a proposal (compared with the code the developer meant to write)
    close_similarity: float = 0.7  # accept-then-edit above this normalised similarity
    min_partial_chars: int = 3  # accept a correct start ("accept word") of at least this many characters
    miss_exact_rate: float = 0.08  # a correct proposal typed over anyway (not noticed)
    accept_close_rate: float = 0.75  # of close proposals, accepted and fixed (others typed over)
    accept_partial_rate: float = 0.6  # of proposals with a correct start, the start is taken
    dismiss_rate: float = 0.15  # of rejections, explicit Esc (the rest are typed over)
    abandon_rate: float = 0.02  # no reaction at all (switched file, proposal vanished)
    # --- human noise
    typo_rate: float = 0.015  # per typed character: wrong key, then backspace
    undo_redo_rate: float = 0.01  # per line: undo the last burst, then redo it
    rewrite_line_rate: float = 0.03  # per line: trial-and-error attempt, deleted, then the real line
    delete_accepted_rate: float = 0.05  # per accept: accepted code deleted and rewritten by hand
    # --- settling
    snapshot_ages_s: tuple[int, ...] = (5, 30, 120, 600)  # survival checks after the reaction

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")
        if not 0.0 < self.close_similarity <= 1.0:
            raise ValueError("close_similarity must be in (0, 1]")
        if self.chars_per_second <= 0:
            raise ValueError("chars_per_second must be positive")


def similarity(a: str, b: str) -> float:
    """1 - normalised Levenshtein distance (1.0 for two empty strings)."""
    return Levenshtein.normalized_similarity(a, b)


def common_prefix_len(a: str, b: str) -> int:
    n = 0
    for ca, cb in zip(a, b, strict=False):
        if ca != cb:
            break
        n += 1
    return n


def word_prefix_len(proposal: str, real: str) -> int:
    """The longest correct start of ``proposal`` that ends at a word boundary ("accept word")."""
    n = common_prefix_len(proposal, real)
    if n == len(proposal) or n == len(real):
        return n
    # back off to the end of the last complete word or symbol run inside the correct part
    while (
        n > 0
        and (proposal[n - 1].isalnum() or proposal[n - 1] == "_")
        and (proposal[n].isalnum() or proposal[n] == "_")
    ):
        n -= 1
    return n


def decide(proposal: str, real: str, params: BehaviourParams, rng: random.Random) -> tuple[Reaction, int]:
    """How the developer reacts, and how many characters they accept.

    ``real`` is what they were about to type at the cursor, up to the end of the line.
    """
    if rng.random() < params.abandon_rate:
        return "abandon", 0
    if proposal == real:
        return ("reject", 0) if rng.random() < params.miss_exact_rate else ("accept_exact", len(proposal))
    if similarity(proposal, real) >= params.close_similarity and rng.random() < params.accept_close_rate:
        return "accept_close", len(proposal)
    start = word_prefix_len(proposal, real)
    if start >= params.min_partial_chars and rng.random() < params.accept_partial_rate:
        return "accept_partial", start
    return "reject", 0
