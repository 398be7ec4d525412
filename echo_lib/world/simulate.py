"""Drive many simulated sessions against one completion engine, batching their requests.

``plan_day`` decides who works on what and when (model-independent: the same seed gives the same
sessions for any model, which makes comparisons paired). ``run_sessions`` steps every session's
generator, batches the pending completion requests into the engine, and collects the results.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from echo_lib.world.behaviour import BehaviourParams
from echo_lib.world.corpus import SourceFile
from echo_lib.world.delivery import DeliveryParams
from echo_lib.world.session import SessionResult, SessionSpec, simulate

USERS_PER_REPO = 6
MIN_BLOCK_LINES, MAX_BLOCK_LINES = 12, 40


class Engine(Protocol):
    model_version: str

    def complete(self, prefixes: list[str], suffixes: list[str] | None = None) -> list[Any]: ...


def _stable_int(*parts: object) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def user_id(repo: str, index: int) -> str:
    """Pseudonymous and stable across days: the same developers work in a repo day after day."""
    return "u-" + hashlib.sha256(f"{repo}#{index}".encode()).hexdigest()[:10]


def _pick_block(text: str, rng: random.Random) -> tuple[int, int] | None:
    """A block of whole lines to write, starting and ending on a non-blank line."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n" and i + 1 < len(text)]
    if not text.endswith("\n") or len(starts) < MIN_BLOCK_LINES:
        return None
    length = rng.randint(MIN_BLOCK_LINES, min(MAX_BLOCK_LINES, len(starts)))
    first = rng.randrange(0, len(starts) - length + 1)
    begin = starts[first]
    end = starts[first + length] if first + length < len(starts) else len(text)
    return begin, end


def plan_day(
    files: Sequence[SourceFile],
    day: date,
    sessions: int,
    seed: int,
    behaviour: BehaviourParams,
    delivery: DeliveryParams,
) -> list[SessionSpec]:
    """Who writes which block of which file, when. Depends only on the inputs, never on a model."""
    if not files:
        raise ValueError("no files to simulate on: check the corpus split")
    by_repo: dict[str, list[SourceFile]] = {}
    for f in sorted(files, key=lambda f: f.doc_id):
        by_repo.setdefault(f.repo, []).append(f)
    repos = sorted(by_repo)
    rng = random.Random(_stable_int("plan", day.isoformat(), seed))
    specs: list[SessionSpec] = []
    attempts = 0
    while len(specs) < sessions and attempts < sessions * 20:
        attempts += 1
        repo = rng.choices(repos, weights=[len(by_repo[r]) for r in repos])[0]
        source = rng.choice(by_repo[repo])
        block = _pick_block(source.text, rng)
        if block is None:
            continue
        index = rng.randrange(USERS_PER_REPO)
        user = user_id(repo, index)
        user_rng = random.Random(_stable_int("user", user))  # a developer's speed and clock are theirs
        speed = behaviour.chars_per_second * user_rng.lognormvariate(0, behaviour.speed_spread)
        skewed = user_rng.random() < delivery.clock_skew_user_rate
        skew = user_rng.uniform(-delivery.max_clock_skew_s, delivery.max_clock_skew_s) if skewed else 0.0
        # working hours, UTC: most sessions between 07:00 and 19:00, a few outside
        hour = rng.gauss(13, 3.5) % 24
        start = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hour)
        number = len(specs)
        specs.append(
            SessionSpec(
                session_id=f"s-{day.strftime('%Y%m%d')}-{seed}-{number:05d}",
                user_id=user,
                repo_id=repo,
                doc_id=source.doc_id,
                text=source.text,
                block_start=block[0],
                block_end=block[1],
                start=start,
                seed=_stable_int("session", day.isoformat(), seed, number),
                chars_per_second=speed,
                clock_skew_s=skew,
            )
        )
    if not specs:
        raise ValueError("no file is long enough to simulate a session on")
    return specs


def run_sessions(
    specs: Sequence[SessionSpec],
    engine: Engine,
    behaviour: BehaviourParams,
    *,
    concurrency: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> list[SessionResult]:
    """Run sessions concurrently (up to ``concurrency`` at once), batching their requests.

    ``progress(sessions, events)`` is called as each session ends, with 1 and its event count."""
    results: dict[int, SessionResult] = {}
    queue = list(enumerate(specs))[::-1]
    active: dict[int, tuple[Any, Any]] = {}  # index -> (generator, pending request)

    def start_more() -> None:
        while queue and len(active) < concurrency:
            index, spec = queue.pop()
            generator = simulate(spec, behaviour, engine.model_version)
            advance(index, generator, None, first=True)

    def advance(index: int, generator, value, first: bool = False) -> None:
        try:
            request = next(generator) if first else generator.send(value)
        except StopIteration as done:
            results[index] = done.value
            active.pop(index, None)
            if progress:
                progress(1, len(done.value.events))
            return
        active[index] = (generator, request)

    start_more()
    while active:
        indices = list(active)
        requests = [active[i][1] for i in indices]
        proposals = engine.complete([r.prefix for r in requests], [r.suffix for r in requests])
        for index, proposal in zip(indices, proposals, strict=True):
            advance(index, active[index][0], proposal)
        start_more()
    return [results[i] for i in range(len(specs))]


# --------------------------------------------------------------------------- acceptance

OUTCOMES = ("accept_exact", "accept_close", "accept_partial", "reject", "abandon")


def retained_chars(record) -> int:
    """Characters of accepted text still standing in the settled code."""
    if record.reaction not in ("accept_exact", "accept_close", "accept_partial"):
        return 0
    import difflib

    accepted = record.proposal[: record.accepted_len]
    blocks = difflib.SequenceMatcher(a=accepted, b=record.final, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks)


def per_session(results: Sequence[SessionResult], seen_lines: set[str] | None = None) -> list[dict[str, Any]]:
    """What each session's developer got: requests, shown, accepted, accepted-and-retained chars.

    With ``seen_lines`` (stripped lines of the training-side files), the same four counts again,
    ``*_seen``, for the requests whose line of the real file is one of them: held-out code that
    also stands verbatim in experience files (shared idioms a repo fine-tune would learn, unless
    training text is decontaminated line by line)."""
    rows = []
    for r in results:
        row = {
            "session_id": r.spec.session_id,
            "requests": r.requests,
            "shown": len(r.shown),
            "accepted": sum(s.reaction.startswith("accept") for s in r.shown),
            "retained_chars": sum(retained_chars(s) for s in r.shown),
        }
        if seen_lines is not None:
            seen = [_line_at(r.spec.text, o).strip() in seen_lines for o in r.request_offsets]
            shown = [s for s in r.shown if _line_at(r.spec.text, s.offset).strip() in seen_lines]
            row.update(
                requests_seen=sum(seen),
                shown_seen=len(shown),
                accepted_seen=sum(s.reaction.startswith("accept") for s in shown),
                retained_chars_seen=sum(retained_chars(s) for s in shown),
            )
        rows.append(row)
    return rows


def _line_at(text: str, offset: int) -> str:
    end = text.find("\n", offset)
    return text[text.rfind("\n", 0, offset) + 1 : end if end >= 0 else len(text)]


def acceptance_summary(results: Sequence[SessionResult], *, seed: int = 0) -> dict[str, Any]:
    """Acceptance among shown and retained characters per request, each with a session-level
    bootstrap 95% CI, the shown rate, and the outcome breakdown."""
    from echo_lib.core.stats import bootstrap_ratio

    sessions = per_session(results)
    column = {k: [s[k] for s in sessions] for k in ("requests", "shown", "accepted", "retained_chars")}
    requests = sum(column["requests"])
    outcomes = Counter(s.reaction for r in results for s in r.shown)
    by_trigger: dict[str, dict[str, int]] = {}
    for r in results:
        for s in r.shown:
            slot = by_trigger.setdefault(s.trigger, {"shown": 0, "accepted": 0})
            slot["shown"] += 1
            slot["accepted"] += s.reaction.startswith("accept")
    acceptance = bootstrap_ratio(column["accepted"], column["shown"], seed=seed)
    retained = bootstrap_ratio(column["retained_chars"], column["requests"], seed=seed)
    triggers = Counter()
    for r in results:
        triggers.update(r.triggers)
    total_shown = sum(column["shown"])
    return {
        "sessions": len(results),
        "requests": requests,
        "shown": total_shown,
        "accepted": sum(column["accepted"]),
        "acceptance_rate": acceptance["value"],
        "ci_low": acceptance["ci_low"],
        "ci_high": acceptance["ci_high"],
        "shown_per_trigger": total_shown / requests if requests else 0.0,
        "accepted_retained_chars": sum(column["retained_chars"]),
        "retained_per_request": retained["value"],
        "retained_ci_low": retained["ci_low"],
        "retained_ci_high": retained["ci_high"],
        "outcomes": {o: outcomes.get(o, 0) for o in OUTCOMES},
        "by_trigger": by_trigger,
        "triggers": dict(triggers),
        "events": sum(len(r.events) for r in results),
    }
