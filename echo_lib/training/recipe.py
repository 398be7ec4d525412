"""The SFT recipe: every arm spends the same budget of full-length, full-loss token blocks.

A training step is ``rows_per_step`` blocks of ``block_len`` tokens, every token in the loss (its
weight may differ), so steps, tokens per step and loss tokens are equal across arms by
construction; what an arm chooses is only *which* code fills its blocks and how each token is
weighted:

- **session blocks** (Echo): the code users wrote around each request, that is each request's
  prompt followed by the code the user kept there, once per stretch of code. The refinement sets
  per-token loss weights: the kept code at the request's position weighs ``kept`` (``fixed`` where
  the user rejected or edited the shown proposal), every other token 1, and each block's weights
  are normalised to mean 1 (a weighted block moves the model as much as a plain one, with the push
  where the users' own corrections are). Where the user *rejected* the shown proposal and wrote
  something else, the block also carries the proposal's first diverging token at that position:
  an unlikelihood term (``-log(1 - p)``) pushes it down in the same forward pass, the on-policy
  negative no fine-tune on files can see;
- **file blocks**: random stretches of files (the team's files for ``repo``, public code for
  ``control`` and for replay), weight 1.

The same decontamination applies to every arm's text: a line that also stands in a held-out file
(stripped, long enough to tell code apart: :func:`~echo_lib.world.corpus.line_set`, the rule
``build-dataset`` applies to gold rows) is dropped from session texts, team files and replay alike
before tokenising.

Seeds are named (:data:`SEEDS`) and move with the training window's last day, so every round of
every arm draws fresh blocks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from echo_lib.mining.refinements import ACCEPTED_OUTCOMES, OUTCOMES
from echo_lib.world import corpus

IGNORE = -100  # no negative token at this position

# what each random draw is for; the seed of a draw is derived from (learn.seed, window end, purpose)
SEEDS = {"replay": 1, "public_blocks": 2, "team_blocks": 3, "shuffle": 4, "session_cycle": 5}


def data_seed(base: int, window_end: str, purpose: str) -> int:
    """A seed for ``purpose`` that changes with the window's last day: round r's draws are new."""
    digest = hashlib.sha256(f"{base}|{window_end}|{SEEDS[purpose]}".encode()).hexdigest()
    return int(digest[:8], 16)


def heldout_line_set(texts: Iterable[str]) -> set[str]:
    """Stripped lines of held-out files long enough to count as evaluation code."""
    return corpus.line_set(texts)


def without_lines(text: str, lines: set[str]) -> str:
    """``text`` without the lines whose stripped form is in ``lines`` (kept line ends as they were)."""
    if not lines:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if line.strip() not in lines)


@dataclass(frozen=True)
class Weights:
    """How a refinement weighs its kept code (relative to 1 for the code around it)."""

    kept: float = 2.0  # the code the user kept at the request's position
    fixed: float = 4.0  # ... where the user rejected or edited the proposal (what the model got wrong)
    unlikelihood: float = 0.0  # weight of the rejected proposal's diverging token (0 = off)


@dataclass
class SessionText:
    """One stretch of a user's code with the character spans its refinements weigh."""

    text: str
    spans: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, weight)
    negatives: list[tuple[int, str]] = field(default_factory=list)  # (char position, proposal text)


FIXED = tuple(o for o in OUTCOMES if o != "accepted_unchanged")  # the user changed what was shown
REJECTED = tuple(o for o in FIXED if o not in ACCEPTED_OUTCOMES)  # and the metric says: not accepted


def session_texts(
    records: list[dict[str, Any]], outcomes: dict[str, tuple[str, str]], weights: Weights
) -> list[SessionText]:
    """Each request's prompt + kept code, once per stretch of code (a text whose last 20 non-blank
    lines were all seen in a longer one adds nothing new), weighted by its refinement.

    ``outcomes`` maps a request id to (outcome, proposal) where the user did not keep the proposal
    as shown (gold/preference); other requests were accepted unchanged."""
    texts = sorted(
        ((r["prompt"], r["completion"].rstrip("\n") + "\n", r.get("request_id")) for r in records),
        key=lambda t: len(t[0]) + len(t[1]),
        reverse=True,
    )
    seen: dict[str, list[int]] = {}  # non-blank line -> the kept texts it stands in
    out: list[SessionText] = []
    for prompt, kept, request_id in texts:
        text = prompt + kept
        lines = [line for line in text.splitlines() if line.strip()]
        tail = lines[-20:]
        outcome, proposal = outcomes.get(request_id or "", ("accepted_unchanged", ""))
        weight = weights.fixed if outcome in FIXED else weights.kept
        negative = weights.unlikelihood > 0 and outcome in REJECTED and bool(proposal)
        if tail and sum(line in seen for line in tail) >= 0.8 * len(tail):
            # a shorter stretch of code already kept: weigh its refinement where it stands there
            anchor = prompt[-80:] + kept.rstrip("\n")
            found = False
            for index in seen.get(tail[-1], [])[:64]:
                at = out[index].text.find(anchor)
                if at >= 0:
                    start = at + len(anchor) - len(kept.rstrip("\n"))
                    out[index].spans.append((start, start + len(kept.rstrip("\n")), weight))
                    if negative:
                        out[index].negatives.append((start, proposal))
                    found = True
                    break
            if found:
                continue  # else: its code differs from what was kept later; it is its own text
        for line in lines:
            seen.setdefault(line, []).append(len(out))
        item = SessionText(text, [(len(prompt), len(text), weight)])
        if negative:
            item.negatives.append((len(prompt), proposal))
        out.append(item)
    return out


def _diverging_token(tokenizer, prompt: str, kept: str, proposal: str) -> tuple[int, int] | None:
    """(token index in ``prompt + kept``, proposal token id) at the first token where the two texts'
    tokens differ; None when the proposal is a prefix of the kept code (nothing in it was wrong).
    The index may fall on the prompt's last token where BPE merges it with what follows: that is the
    token the engine regenerates (token healing), so the negative stands where the model chose."""
    if kept.startswith(proposal):
        return None
    kept_ids = tokenizer(prompt + kept, add_special_tokens=False)["input_ids"]
    prop_ids = tokenizer(prompt + proposal, add_special_tokens=False)["input_ids"]
    for i, (a, b) in enumerate(zip(kept_ids, prop_ids, strict=False)):
        if a != b:
            return i, b
    return None


def weighted_blocks(
    items: list[SessionText], tokenizer, block_len: int, weights: Weights, *, source: str = "session"
) -> list[dict[str, Any]]:
    """Blocks of exactly ``block_len`` tokens (the newest code first; a text's first block overlaps
    the one after it rather than come up short; texts shorter than a block are packed together,
    EOS between them) with per-token weights normalised to mean 1 and, where a rejected proposal
    diverged, its token."""
    rows: list[dict[str, Any]] = []
    short: list[tuple[list[int], list[float], list[int]]] = []
    for item in items:
        enc = tokenizer(item.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        raw = [1.0] * len(ids)
        for start, end, w in item.spans:
            for t, (a, b) in enumerate(offsets):
                if b > start and a < end:
                    raw[t] = max(raw[t], w)
        negative = [IGNORE] * len(ids)
        for pos, proposal in item.negatives:
            hit = _diverging_token(tokenizer, item.text[:pos], item.text[pos:], proposal)
            if hit is not None and hit[0] < len(ids):
                negative[hit[0]] = hit[1]
        if len(ids) < block_len:
            short.append((ids, raw, negative))
            continue
        for end in range(len(ids), 0, -block_len):
            lo = max(0, end - block_len)
            if end - lo < block_len:  # the file's start: a full block that overlaps the next one
                lo, end = 0, block_len
            rows.append(_weighted_row(ids[lo:end], raw[lo:end], negative[lo:end], source))
    eos = tokenizer.eos_token_id
    packed: tuple[list[int], list[float], list[int]] = ([], [], [])
    for ids, raw, negative in short:
        for part, extra in zip(packed, (ids + [eos], raw + [1.0], negative + [IGNORE]), strict=True):
            part.extend(extra)
        while len(packed[0]) >= block_len:
            rows.append(_weighted_row(*(part[:block_len] for part in packed), source))
            packed = tuple(part[block_len:] for part in packed)  # type: ignore[assignment]
    if len(packed[0]) >= block_len // 4 and not rows:  # a short block only where it is all there is
        rows.append(_weighted_row(*packed, source))
    return rows


def _weighted_row(ids: list[int], raw: list[float], negative: list[int], source: str) -> dict[str, Any]:
    mean = sum(raw) / len(raw)
    return {
        "input_ids": list(ids),
        "loss_weights": [x / mean for x in raw],
        "negative_ids": list(negative),
        "source": source,
    }


def file_blocks(
    texts: list[str],
    count: int,
    tokenizer,
    block_len: int,
    seed: int,
    *,
    source: str,
    min_tokens: int = 0,
) -> list[dict[str, Any]]:
    """``count`` full-loss blocks of ``block_len`` tokens: a random file from a random line start,
    continued (EOS between) by other random files until the block is full, so short files are
    drawn too. With ``min_tokens`` (the rows recipe), one stretch of one file of at least that
    many tokens instead."""
    rng = random.Random(seed)
    docs = [t for t in texts if len(t) > 200] if min_tokens else [t for t in texts if t.strip()]
    rows: list[dict[str, Any]] = []
    attempts = 0
    while docs and len(rows) < count and attempts < count * 20:
        attempts += 1
        text = rng.choice(docs)
        start = rng.randrange(0, max(1, len(text) - block_len * 4))
        start = text.find("\n", start) + 1 if start else 0  # begin at a line start, as code does
        ids = tokenizer(text[start : start + block_len * 6], add_special_tokens=False)["input_ids"][
            :block_len
        ]
        if min_tokens:
            if len(ids) >= min_tokens:
                rows.append(plain_block(ids, source))
            continue
        while len(ids) < block_len:
            more = rng.choice(docs)[: block_len * 6]
            ids = [*ids, tokenizer.eos_token_id, *tokenizer(more, add_special_tokens=False)["input_ids"]]
        rows.append(plain_block(ids[:block_len], source))
    return rows


def plain_block(ids: list[int], source: str) -> dict[str, Any]:
    return {
        "input_ids": list(ids),
        "loss_weights": [1.0] * len(ids),
        "negative_ids": [IGNORE] * len(ids),
        "source": source,
    }


def cycle_to(rows: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """Exactly ``count`` rows: whole passes over ``rows`` (each pass in a new order), then a part."""
    if not rows or count <= 0:
        return []
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    while len(out) < count:
        order = list(rows)
        rng.shuffle(order)
        out.extend(order[: count - len(out)])
    return out


def block_tokens(rows: list[dict[str, Any]]) -> int:
    """Tokens the loss sees (weight > 0); the first token of a row is never predicted."""
    return sum(sum(1 for w in r["loss_weights"][1:] if w > 0) for r in rows)


@dataclass(frozen=True)
class Budget:
    """One arm-round's rows: ``steps * rows_per_step`` blocks of ``block_len`` tokens."""

    steps: int
    rows_per_step: int
    block_len: int

    @property
    def rows(self) -> int:
        return self.steps * self.rows_per_step


def arm_rows(
    budget: Budget,
    *,
    tokenizer,
    replay_share: float,
    public_texts: list[str],
    sessions: list[dict[str, Any]] | None = None,
    team_texts: list[str] | None = None,
    team_share: float = 0.0,
    team_source: str = "team",
    seed: int,
    window_end: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Exactly ``budget.rows`` blocks: ``replay_share`` of them public-code replay, the rest the
    arm's own: session blocks (cycled to fill), team-file blocks (``team_share`` of them beside
    sessions, or all of them without sessions), or public code (neither: the control)."""
    n = budget.rows
    n_replay = round(n * replay_share) if (sessions is not None or team_texts) else 0
    n_team = 0
    if team_texts:
        n_team = n - n_replay if sessions is None else round(team_share * (n - n_replay))
    n_sessions = n - n_replay - n_team if sessions is not None else 0
    n_public = n - n_replay - n_team - n_sessions
    rows: list[dict[str, Any]] = []
    if n_sessions:
        rows += cycle_to(sessions or [], n_sessions, data_seed(seed, window_end, "session_cycle"))
        if not sessions:
            n_public += n_sessions  # nothing from the window: public code keeps the budget equal
    for count, texts, purpose, source in (
        (n_team, team_texts or [], "team_blocks", team_source),
        (n_public, public_texts, "public_blocks", "public"),
        (n_replay, public_texts, "replay", "replay"),
    ):
        if count:
            drawn_seed = data_seed(seed, window_end, purpose)
            drawn = file_blocks(texts, count, tokenizer, budget.block_len, drawn_seed, source=source)
            rows += cycle_to(drawn, count, drawn_seed)  # a small corpus repeats rather than shrinks
    if len(rows) != n:
        raise ValueError(
            f"{len(rows)} blocks for a budget of {n}: the arm's code cannot fill a step "
            f"({n_sessions} session, {n_team} team, {n_public} public, {n_replay} replay blocks wanted)"
        )
    random.Random(data_seed(seed, window_end, "shuffle")).shuffle(rows)
    own = [r for r in rows if r["source"] not in ("replay", "public")]
    info = {
        "rows": len(rows),
        "loss_tokens": block_tokens(rows),
        "team_loss_tokens": block_tokens(own),
        "replay_rows": sum(r["source"] == "replay" for r in rows),
        "session_blocks": len(sessions or []),
        "session_passes": round(n_sessions / len(sessions), 2) if sessions else 0.0,
        "negative_tokens": sum(sum(t != IGNORE for t in r["negative_ids"]) for r in rows),
    }
    return rows, info
