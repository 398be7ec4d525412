"""One simulated editing session: a developer writes a block of a real file into place.

The session starts with the file minus a block of whole lines (the developer has opened an empty
line where the block goes) and ends with the real file, whatever happened in between. It is a
generator: it yields :class:`CompletionRequest` at trigger points and receives the engine's
:class:`~echo_lib.agent.engine.Proposal`, so a driver can batch requests across many sessions.

Randomness is split into independent streams seeded from the session seed. Trigger points and
noise are drawn per position *before* the session starts, so two models run on the same session
see the same developer: the same triggers, typos and pauses wherever they type the same text.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from echo_lib.core.events import SCHEMA_VERSION, format_ts
from echo_lib.world.behaviour import BehaviourParams, decide

PREFIX_WINDOW = 4000  # characters of context the client sends (the engine truncates to its budget)
SUFFIX_WINDOW = 1000
CLIENT = "echo-world/0.1"
WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    user_id: str
    repo_id: str
    doc_id: str
    text: str  # the real file
    block_start: int  # first character of the block the developer writes (a line start)
    block_end: int  # one past the block's last newline
    start: datetime
    seed: int
    chars_per_second: float
    clock_skew_s: float = 0.0  # this client's clock error, applied to every ts
    language: str = "python"


@dataclass(frozen=True)
class CompletionRequest:
    prefix: str
    suffix: str


@dataclass
class ShownRecord:
    """Ground truth for one shown proposal (what a perfect miner would reconstruct)."""

    request_id: str
    offset: int
    trigger: str
    proposal: str
    confidence: float
    reaction: str
    accepted_len: int
    final: str  # the code that settled in the region: the rest of the real line
    prefix: str = ""  # the request's prefix, as the engine saw it


@dataclass
class SessionResult:
    spec: SessionSpec
    events: list[dict[str, Any]]
    shown: list[ShownRecord]
    requests: int
    final_doc: str
    triggers: dict[str, int] = field(default_factory=dict)
    request_offsets: list[int] = field(default_factory=list)  # where in spec.text each request fired


def _trigger_kind(text: str, pos: int, line_start: int) -> str | None:
    """Where an IDE would fire a request at ``pos`` (before typing text[pos])."""
    if pos >= len(text) or text[pos] == "\n":
        return None
    before = text[line_start:pos]
    if not before.strip():
        return "line_start" if text[pos] not in " \t" else None
    prev = text[pos - 1]
    if prev in ".(=[" or before.endswith(", "):
        return "mid_line"
    if (
        prev in WORD
        and text[pos] in WORD
        and pos - 2 >= line_start
        and text[pos - 2] in WORD
        and (pos - 3 < line_start or text[pos - 3] not in WORD)
    ):
        return "mid_line"  # two characters into an identifier
    return None


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Session:
    def __init__(self, spec: SessionSpec, params: BehaviourParams, model_version: str) -> None:
        self.spec, self.params, self.model_version = spec, params, model_version
        text, a, b = spec.text, spec.block_start, spec.block_end
        if not (0 <= a < b <= len(text)) or text[b - 1] != "\n" or (a > 0 and text[a - 1] != "\n"):
            raise ValueError(f"{spec.doc_id}: block [{a}, {b}) must span whole lines")
        # The developer opened an empty line: the block's last newline is already there.
        self.doc = text[:a] + text[b - 1 :]
        self.pos = a  # next character of `text` to type; doc == text[:pos] + text[b-1:] between actions
        self.end = b - 1
        self.clock = spec.start
        self.events: list[dict[str, Any]] = []
        self.shown: list[ShownRecord] = []
        self.pending: list[tuple[datetime, str, int, int]] = []  # (due, request_id, age, offset)
        self.requests = 0
        self.request_offsets: list[int] = []
        self.trigger_counts = {"line_start": 0, "mid_line": 0}
        base = int(hashlib.sha256(str(spec.seed).encode()).hexdigest()[:15], 16)
        self.rng_ids = random.Random(base + 1)
        self.rng_react = random.Random(base + 2)
        self.rng_time = random.Random(base + 3)
        self._draw_positions(random.Random(base + 4))

    # ------------------------------------------------------------------ plan (model-independent)
    def _draw_positions(self, rng: random.Random) -> None:
        p, text = self.params, self.spec.text
        self.trigger_at: dict[int, str] = {}
        self.typo_at: set[int] = set()
        self.line_noise: dict[int, str] = {}  # line start -> "rewrite" | "undo"
        line_start, last_trigger = self.pos, -(10**9)
        for pos in range(self.pos, self.end):
            if pos == 0 or text[pos - 1] == "\n":
                line_start, last_trigger = pos, -(10**9)
                r = rng.random()
                if r < p.rewrite_line_rate:
                    self.line_noise[pos] = "rewrite"
                elif r < p.rewrite_line_rate + p.undo_redo_rate:
                    self.line_noise[pos] = "undo"
            kind = _trigger_kind(text, pos, line_start)
            rate = p.line_start_trigger_rate if kind == "line_start" else p.mid_line_trigger_rate
            if kind and pos - last_trigger >= p.min_trigger_gap and rng.random() < rate:
                self.trigger_at[pos] = kind
                last_trigger = pos
            if text[pos] not in "\n " and rng.random() < p.typo_rate:
                self.typo_at.add(pos)

    # ------------------------------------------------------------------ events
    def emit(self, event_type: str, **fields: Any) -> None:
        self._flush_snapshots(self.clock)
        self._append(event_type, self.clock, fields)

    def _append(self, event_type: str, moment: datetime, fields: dict[str, Any]) -> None:
        s = self.spec
        self.events.append(
            {
                "event_id": _event_id(self.rng_ids),
                "schema_version": SCHEMA_VERSION,
                "event_type": event_type,
                "ts": format_ts(moment + timedelta(seconds=s.clock_skew_s)),
                "seq": len(self.events),
                "session_id": s.session_id,
                "user_id": s.user_id,
                "repo_id": s.repo_id,
                "doc_id": s.doc_id,
                "language": s.language,
                "client": CLIENT,
                **fields,
            }
        )

    def _flush_snapshots(self, until: datetime) -> None:
        while self.pending and self.pending[0][0] <= until:
            due, request_id, age, offset = self.pending.pop(0)
            eol = self.doc.find("\n", offset)
            text = self.doc[offset : eol if eol >= 0 else len(self.doc)]
            self._append(
                "region_snapshot",
                due,
                {"request_id": request_id, "age_s": age, "offset": offset, "text": text},
            )

    def _schedule_snapshots(self, request_id: str, offset: int) -> None:
        for age in self.params.snapshot_ages_s:
            self.pending.append((self.clock + timedelta(seconds=age), request_id, age, offset))
        self.pending.sort(key=lambda item: item[0])

    def change(
        self, offset: int, removed: int, inserted: str, cause: str, request_id: str | None = None
    ) -> None:
        self.doc = self.doc[:offset] + inserted + self.doc[offset + removed :]
        fields: dict[str, Any] = {
            "offset": offset,
            "removed_len": removed,
            "inserted": inserted,
            "cause": cause,
        }
        if request_id:
            fields["request_id"] = request_id
        self.emit("doc_change", **fields)

    def wait(self, seconds: float) -> None:
        self.clock += timedelta(seconds=max(seconds, 0.0))

    def type_time(self, chars: int) -> float:
        return chars / self.spec.chars_per_second * self.rng_time.uniform(0.7, 1.3)

    # ------------------------------------------------------------------ actions
    def type_text(self, chunk: str) -> None:
        """Type real text at the cursor (pos advances), as one coalesced burst."""
        if not chunk:
            return
        self.wait(self.type_time(len(chunk)))
        self.change(self.pos, 0, chunk, "typing")
        self.pos += len(chunk)

    def typo(self) -> None:
        wrong = self.rng_time.choice("abcdefghijklmnopqrstuvwxyz")
        self.wait(self.type_time(1))
        self.change(self.pos, 0, wrong, "typing")
        self.wait(0.3)
        self.change(self.pos, 1, "", "delete")

    def rewrite_attempt(self) -> None:
        """Trial and error: type a wrong version of the line, then delete it all."""
        eol = self.spec.text.find("\n", self.pos)
        real = self.spec.text[self.pos : eol]
        cut = self.rng_time.randint(0, max(0, len(real) - 1))
        attempt = real[:cut] + self.rng_time.choice(["x", "tmp", "None", "self.", "()", "foo"])
        self.wait(self.type_time(len(attempt)))
        self.change(self.pos, 0, attempt, "typing")
        self.wait(self.rng_time.uniform(1.0, 4.0))
        self.change(self.pos, len(attempt), "", "delete")

    def undo_redo(self, burst: str, at: int) -> None:
        self.wait(self.rng_time.uniform(0.5, 2.0))
        self.change(at, len(burst), "", "undo")
        self.wait(self.rng_time.uniform(0.3, 1.5))
        self.change(at, 0, burst, "redo")

    # ------------------------------------------------------------------ proposals
    def react(self, kind: str, proposal_text: str, confidence: float) -> None:
        text, p = self.spec.text, self.params
        request_id = f"{self.spec.session_id}-r{len(self.shown)}"
        offset = self.pos
        eol = text.find("\n", offset)
        real = text[offset:eol]
        self.emit(
            "completion_shown",
            request_id=request_id,
            model_version=self.model_version,
            offset=offset,
            prefix=self.doc[max(0, offset - PREFIX_WINDOW) : offset],
            suffix=self.doc[offset : offset + SUFFIX_WINDOW],
            proposal=proposal_text,
            confidence=round(float(confidence), 6),
            latency_ms=int(self.rng_time.uniform(60, 250)),
            trigger=kind,
        )
        reaction, accepted = decide(proposal_text, real, p, self.rng_react)
        prefix = self.doc[max(0, offset - PREFIX_WINDOW) : offset]
        self.shown.append(
            ShownRecord(request_id, offset, kind, proposal_text, confidence, reaction, accepted, real, prefix)
        )
        self.wait(p.review_s * self.rng_time.uniform(0.5, 2.0))
        self._schedule_snapshots(request_id, offset)
        if reaction == "abandon":
            return
        if reaction == "reject":
            reason = "dismissed" if self.rng_react.random() < p.dismiss_rate else "typed_over"
            self.emit("completion_rejected", request_id=request_id, reason=reason)
            return
        self.emit("completion_accepted", request_id=request_id, accepted_len=accepted)
        inserted = proposal_text[:accepted]
        self.change(offset, 0, inserted, "accept", request_id)
        if reaction == "accept_close":
            self._edit_into(offset, inserted, real)
            self.pos = eol
        else:
            self.pos = offset + accepted
        if self.rng_react.random() < p.delete_accepted_rate:
            # the accepted code is deleted and written again by hand
            done = self.spec.text[offset : self.pos]
            self.wait(self.rng_time.uniform(1.0, 5.0))
            self.change(offset, len(done), "", "delete")
            self.pos = offset
            self.type_text(done)

    def _edit_into(self, offset: int, have: str, want: str) -> None:
        """Edit the accepted text into the intended code, right to left so offsets stay valid."""
        import difflib

        ops = difflib.SequenceMatcher(a=have, b=want, autojunk=False).get_opcodes()
        for tag, i1, i2, j1, j2 in reversed(ops):
            if tag == "equal":
                continue
            self.wait(self.type_time(max(j2 - j1, 1)))
            self.change(offset + i1, i2 - i1, want[j1:j2], "typing" if j2 > j1 else "delete")

    # ------------------------------------------------------------------ main loop
    def run(self) -> Generator[CompletionRequest, Any, SessionResult]:
        text = self.spec.text
        self.emit("session_start", doc_len=len(self.doc))
        while self.pos < self.end:
            pos = self.pos
            if pos == 0 or text[pos - 1] == "\n":
                self.wait(self.rng_time.expovariate(1 / self.params.line_pause_s))
                if self.rng_time.random() < self.params.think_pause_rate:
                    self.wait(self.rng_time.expovariate(1 / self.params.think_pause_s))
                if self.line_noise.pop(pos, None) == "rewrite":
                    line = text[pos : text.index("\n", pos)]
                    self.type_text(line[: len(line) - len(line.lstrip())])  # the indentation stays
                    self.rewrite_attempt()
                    continue
            kind = self.trigger_at.pop(pos, None)
            if kind:
                self.trigger_counts[kind] += 1
                self.requests += 1
                self.request_offsets.append(pos)
                proposal = yield CompletionRequest(
                    self.doc[max(0, pos - PREFIX_WINDOW) : pos], self.doc[pos : pos + SUFFIX_WINDOW]
                )
                if proposal.shown and proposal.text:
                    self.react(kind, proposal.text, proposal.confidence)
                    if self.pos != pos:
                        continue
            if pos in self.typo_at:
                self.typo_at.discard(pos)
                self.typo()
            # type up to the next decision point: a trigger, a typo, or the end of the line
            stop = pos + 1
            while (
                stop < self.end
                and stop not in self.trigger_at
                and stop not in self.typo_at
                and text[stop - 1] != "\n"
            ):
                stop += 1
            chunk = text[pos:stop]
            self.type_text(chunk)
            if chunk.endswith("\n") and self.line_noise.get(text.rfind("\n", 0, self.pos - 1) + 1) == "undo":
                self.line_noise.pop(text.rfind("\n", 0, self.pos - 1) + 1)
                self.undo_redo(chunk, self.pos - len(chunk))
        # the developer stays in the file while the last survival checks run
        if self.pending:
            self.clock = max(self.clock, self.pending[-1][0])
        self.emit("doc_saved", content_sha256=hashlib.sha256(self.doc.encode()).hexdigest())
        self.emit("session_end", doc_len=len(self.doc))
        return SessionResult(
            self.spec,
            self.events,
            self.shown,
            self.requests,
            self.doc,
            dict(self.trigger_counts),
            list(self.request_offsets),
        )


def simulate(
    spec: SessionSpec, params: BehaviourParams, model_version: str
) -> Generator[CompletionRequest, Any, SessionResult]:
    """The session as a generator; ``send`` each request's Proposal back in."""
    return _Session(spec, params, model_version).run()
