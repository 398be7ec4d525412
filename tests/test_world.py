"""The world on real code, with hand-built proposals standing in for a model's output."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_lib.agent.engine import Proposal
from echo_lib.core.config import load_config
from echo_lib.core.events import validate_event
from echo_lib.world import corpus
from echo_lib.world import session as session_module
from echo_lib.world.behaviour import BehaviourParams, decide, similarity, word_prefix_len
from echo_lib.world.delivery import DeliveryParams, write_day
from echo_lib.world.session import SessionSpec, simulate
from echo_lib.world.simulate import acceptance_summary, plan_day, run_sessions
from tests.scripted import proposal


@pytest.fixture(autouse=True)
def _whole_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    # with the whole document as prefix, a request's cursor is len(prefix): the oracle can see the truth
    monkeypatch.setattr(session_module, "PREFIX_WINDOW", 10**9)


@pytest.fixture(scope="module")
def real_files() -> list[corpus.SourceFile]:
    cfg = load_config().config
    files = corpus.scan(corpus.team_repos(cfg, None), cfg).select("experience")
    return [f for f in files if 2_000 < len(f.text) < 16_000][:40]  # prefix fits the contract whole


def oracle(text: str, rng: random.Random):
    """Proposals built from the real code: exact, close, right start, wrong, empty or hidden."""

    def propose(request) -> Proposal:
        pos = len(request.prefix)
        real = text[pos : text.index("\n", pos)]
        kind = rng.choice(["exact", "close", "start", "wrong", "empty", "hidden"])
        if kind == "exact":
            return proposal(real)
        if kind == "close" and len(real) > 4:
            i = rng.randrange(len(real))
            return proposal(real[:i] + "Z" + real[i + 1 :])
        if kind == "start" and len(real) > 3:
            return proposal(real[: rng.randint(1, len(real) - 1)] + " junk(x)")
        if kind == "hidden":
            return proposal(real, confidence=0.01, shown=False)
        if kind == "empty":
            return proposal("", confidence=0.0, shown=False)
        return proposal("print('nope')")

    return propose


def spec_for(source: corpus.SourceFile, rng: random.Random, seed: int) -> SessionSpec:
    starts = [0] + [i + 1 for i, c in enumerate(source.text) if c == "\n" and i + 1 < len(source.text)]
    first = rng.randrange(0, len(starts) - 5)
    length = rng.randint(3, min(30, len(starts) - first - 1))
    return SessionSpec(
        session_id=f"s-{seed}",
        user_id="u-test",
        repo_id=source.repo,
        doc_id=source.doc_id,
        text=source.text,
        block_start=starts[first],
        block_end=starts[first + length],
        start=datetime(2026, 11, 24, 9, tzinfo=UTC),
        seed=seed,
        chars_per_second=6.0,
        clock_skew_s=rng.choice([0.0, -90.0, 45.5]),
    )


def drive(spec: SessionSpec, params: BehaviourParams, propose):
    generator = simulate(spec, params, "test-model")
    try:
        request = next(generator)
        while True:
            request = generator.send(propose(request))
    except StopIteration as done:
        return done.value


def replay(spec: SessionSpec, events: list[dict]) -> str:
    """What a miner does: apply doc_change events, in seq order, to the starting document."""
    doc = spec.text[: spec.block_start] + spec.text[spec.block_end - 1 :]
    assert events[0]["event_type"] == "session_start" and events[0]["doc_len"] == len(doc)
    for e in sorted(events, key=lambda e: e["seq"]):
        if e["event_type"] == "doc_change":
            assert doc[e["offset"] : e["offset"] + e["removed_len"]] is not None
            doc = doc[: e["offset"]] + e["inserted"] + doc[e["offset"] + e["removed_len"] :]
    return doc


NOISY = BehaviourParams(typo_rate=0.05, undo_redo_rate=0.2, rewrite_line_rate=0.2, delete_accepted_rate=0.3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_index=st.integers(0, 39), seed=st.integers(0, 10**6), noisy=st.booleans())
def test_replaying_edits_rebuilds_the_real_file(real_files, file_index: int, seed: int, noisy: bool) -> None:
    source = real_files[file_index % len(real_files)]
    rng = random.Random(seed)
    spec = spec_for(source, rng, seed)
    result = drive(spec, NOISY if noisy else BehaviourParams(), oracle(source.text, rng))
    assert result.final_doc == source.text
    assert replay(spec, result.events) == source.text
    assert [e["seq"] for e in result.events] == list(range(len(result.events)))
    for event in result.events:
        assert validate_event(event) is None, event
    saved = next(e for e in result.events if e["event_type"] == "doc_saved")
    assert saved["content_sha256"] == hashlib.sha256(source.text.encode()).hexdigest()
    # the latest survival snapshot of every shown proposal is the code that settled there
    snapshots = {}
    for e in result.events:
        if e["event_type"] == "region_snapshot":
            snapshots[e["request_id"]] = e["text"]
    for record in result.shown:
        assert snapshots[record.request_id] == record.final


def test_same_seed_same_events(real_files) -> None:
    spec = spec_for(real_files[0], random.Random(3), 3)
    first = drive(spec, NOISY, oracle(real_files[0].text, random.Random(9)))
    second = drive(spec, NOISY, oracle(real_files[0].text, random.Random(9)))
    assert first.events == second.events


# --------------------------------------------------------------------------- behaviour branches

CODE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nx = 1\n"
QUIET = BehaviourParams(
    line_start_trigger_rate=1.0,
    mid_line_trigger_rate=0.0,
    typo_rate=0.0,
    undo_redo_rate=0.0,
    rewrite_line_rate=0.0,
    delete_accepted_rate=0.0,
    miss_exact_rate=0.0,
    accept_close_rate=1.0,
    accept_partial_rate=1.0,
    dismiss_rate=0.0,
    abandon_rate=0.0,
)


def one_proposal(text: str):
    """Propose ``text`` at the first trigger on the 'return' line, nothing elsewhere."""

    def propose(request) -> Proposal:
        if request.prefix.endswith("def add(a, b):\n    "):
            return proposal(text)
        return proposal("", 0.0, False)

    return propose


def reaction_events(proposal: str, params: BehaviourParams = QUIET) -> list[dict]:
    block_start = CODE.index("def add")
    spec = SessionSpec(
        "s-1",
        "u-1",
        "demo",
        "demo/m.py",
        CODE,
        block_start,
        CODE.index("\n\n\nx") + 1,
        datetime(2026, 11, 24, 9, tzinfo=UTC),
        seed=1,
        chars_per_second=5.0,
    )
    result = drive(spec, params, one_proposal(proposal))
    assert result.final_doc == CODE
    shown = next(i for i, e in enumerate(result.events) if e["event_type"] == "completion_shown")
    return [e for e in result.events[shown:] if e["event_type"] != "region_snapshot"][:6]


def _types(events: list[dict]) -> list[str]:
    return [
        e["event_type"] if e["event_type"] != "doc_change" else f"doc_change:{e['cause']}" for e in events
    ]


def test_exact_proposal_is_accepted_whole() -> None:
    events = reaction_events("return a + b")
    assert _types(events)[:3] == ["completion_shown", "completion_accepted", "doc_change:accept"]
    assert events[1]["accepted_len"] == len("return a + b")
    assert events[2]["inserted"] == "return a + b" and events[2]["request_id"] == events[0]["request_id"]


def test_close_proposal_is_accepted_then_edited() -> None:
    events = reaction_events("return a - b")
    assert _types(events)[:4] == [
        "completion_shown",
        "completion_accepted",
        "doc_change:accept",
        "doc_change:typing",
    ]
    assert events[3]["inserted"] == "+" and events[3]["removed_len"] == 1


def test_right_start_is_partially_accepted() -> None:
    events = reaction_events("return sum(items)")
    assert _types(events)[:3] == ["completion_shown", "completion_accepted", "doc_change:accept"]
    assert events[1]["accepted_len"] == len("return ")
    assert events[2]["inserted"] == "return "


def test_wrong_proposal_is_rejected_and_the_real_code_typed() -> None:
    events = reaction_events("raise ValueError()")
    assert _types(events)[:2] == ["completion_shown", "completion_rejected"]
    assert events[1]["reason"] == "typed_over"
    assert events[2]["event_type"] == "doc_change" and events[2]["cause"] == "typing"


def test_dismissed_and_abandoned() -> None:
    events = reaction_events("raise ValueError()", replace(QUIET, dismiss_rate=1.0))
    assert events[1]["reason"] == "dismissed"
    events = reaction_events("return a + b", replace(QUIET, abandon_rate=1.0))
    assert _types(events)[:2] == ["completion_shown", "doc_change:typing"]


def test_reaction_rules() -> None:
    params, rng = QUIET, random.Random(0)
    assert decide("x = 1", "x = 1", params, rng) == ("accept_exact", 5)
    assert decide("return a - b", "return a + b", params, rng) == ("accept_close", 12)
    assert decide("return sum(items)", "return a + b", params, rng) == ("accept_partial", 7)
    assert decide("raise", "return a + b", params, rng) == ("reject", 0)
    assert word_prefix_len("self.values", "self.value_of") == len("self.")
    assert similarity("", "") == 1.0 and similarity("abc", "abd") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="typo_rate"):
        BehaviourParams(typo_rate=1.5)


def test_similarity_is_one_minus_normalised_levenshtein() -> None:
    """rapidfuzz's similarity is the definition in docs/world.md: 1 - distance / longer length."""
    cases = {("kitten", "sitting"): 3, ("flaw", "lawn"): 2, ("intention", "execution"): 5, ("", "abc"): 3}
    for (a, b), distance in cases.items():
        assert similarity(a, b) == pytest.approx(1 - distance / max(len(a), len(b)))
        assert similarity(b, a) == similarity(a, b)
    assert similarity("", "") == 1.0 and similarity("x = 1", "x = 1") == 1.0


# --------------------------------------------------------------------------- days and delivery


def run_day(real_files, sessions: int, seed: int, delivery: DeliveryParams, progress=None):
    rng = random.Random(seed)
    specs = plan_day(real_files, date(2026, 11, 24), sessions, seed, BehaviourParams(), delivery)

    class Oracle:
        model_version = "oracle"

        def complete(self, prefixes, suffixes=None):
            out = []
            for prefix in prefixes:
                text = next(s.text for s in specs if s.text.startswith(prefix))
                out.append(oracle(text, rng)(type("R", (), {"prefix": prefix})()))
            return out

    return specs, run_sessions(specs, Oracle(), BehaviourParams(), concurrency=8, progress=progress)


def read_partition(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


def test_delivery_artefacts_at_their_rates_never_change_what_a_miner_sees(real_files, tmp_path: Path) -> None:
    specs, results = run_day(real_files, 40, 5, DeliveryParams())
    for spec, result in zip(specs, results, strict=True):
        assert result.final_doc == spec.text
    delivery = DeliveryParams(duplicate_rate=0.02, late_session_rate=0.1, slow_delay_rate=0.05)
    sessions = [r.events for r in results]
    landed = write_day(tmp_path, date(2026, 11, 24), sessions, delivery, seed=1)
    today = read_partition(tmp_path / "raw" / "events" / "dt=2026-11-24")
    tomorrow = read_partition(tmp_path / "raw" / "events" / "dt=2026-11-25")
    delivered = today + tomorrow
    total = sum(map(len, sessions))
    assert landed["lines"] == len(delivered)
    assert 0.01 < (len(delivered) - total) / total < 0.03  # duplicates near 2 percent
    assert tomorrow and landed["late_lines"] == len(tomorrow)
    # arrival order differs from client order somewhere
    position = {e["event_id"]: i for i, e in enumerate(today)}
    assert any(
        position[a["event_id"]] > position[b["event_id"]]
        for s in sessions
        for a, b in zip(s, s[1:], strict=False)
        if a["event_id"] in position and b["event_id"] in position
    )
    # dedupe by event_id, order by (session, seq): exactly the events the sessions produced
    unique = {e["event_id"]: e for e in delivered}
    rebuilt = sorted(unique.values(), key=lambda e: (e["session_id"], e["seq"]))
    assert rebuilt == sorted((e for s in sessions for e in s), key=lambda e: (e["session_id"], e["seq"]))


def test_same_seed_gives_byte_identical_files(real_files, tmp_path: Path) -> None:
    digests = []
    for attempt in range(2):
        _, results = run_day(real_files, 6, 11, DeliveryParams())
        write_day(
            tmp_path / str(attempt),
            date(2026, 11, 24),
            [r.events for r in results],
            DeliveryParams(),
            seed=11,
        )
        folder = tmp_path / str(attempt) / "raw" / "events" / "dt=2026-11-24"
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()})
    assert digests[0] == digests[1] and digests[0]


def test_plan_is_model_independent_and_spread_over_the_day(real_files) -> None:
    first = plan_day(real_files, date(2026, 11, 24), 50, 3, BehaviourParams(), DeliveryParams())
    again = plan_day(real_files, date(2026, 11, 24), 50, 3, BehaviourParams(), DeliveryParams())
    assert first == again
    assert len({s.start.hour for s in first}) > 6
    assert len({s.user_id for s in first}) > 3
    other_day = plan_day(real_files, date(2026, 11, 25), 50, 3, BehaviourParams(), DeliveryParams())
    assert {s.user_id for s in other_day} & {s.user_id for s in first}  # the same developers return


def test_acceptance_summary_counts(real_files) -> None:
    _, results = run_day(real_files, 12, 2, DeliveryParams.none())
    summary = acceptance_summary(results)
    assert summary["shown"] == sum(summary["outcomes"].values())
    assert summary["accepted"] == sum(v for k, v in summary["outcomes"].items() if k.startswith("accept"))
    assert summary["ci_low"] <= summary["acceptance_rate"] <= summary["ci_high"]
    assert summary["shown"] == sum(t["shown"] for t in summary["by_trigger"].values())


def test_progress_lines_report_sessions_and_events(real_files) -> None:
    from echo_lib.world.runner import ProgressLines

    lines: list[str] = []
    reporter = ProgressLines(lines.append, "world", every_s=0)
    reporter.plan(6)
    _, results = run_day(real_files, 6, 3, DeliveryParams.none(), reporter)
    events = sum(len(r.events) for r in results)
    assert len(lines) == 6 and lines[0].startswith("world: 1/6 sessions, ")
    assert lines[-1].startswith(f"world: 6/6 sessions, {events:,} events, ") and lines[-1].endswith(
        " events/s"
    )


def test_echoctl_world_progress_in_a_log_is_lines(real_files, capsys) -> None:
    """Without a terminal (Airflow, CI, `make demo > log`), echoctl's world commands say lines."""
    from echo_lib.ops.cli.common import run_world

    def day(on_plan, progress):
        specs, results = run_day(real_files, 3, 5, DeliveryParams.none())
        on_plan(len(specs))
        for r in results:
            progress(1, len(r.events))
        return sum(len(r.events) for r in results)

    events = run_world("simulating", day)
    assert f"simulating: 3/3 sessions, {events:,} events, " in capsys.readouterr().err


def test_per_session_splits_requests_by_whether_their_line_was_seen(real_files) -> None:
    """The held-out split of a report: requests whose real line also stands in other files."""
    from echo_lib.world.simulate import per_session

    source = real_files[0]
    spec = spec_for(source, random.Random(3), 3)
    result = drive(spec, BehaviourParams(), oracle(source.text, random.Random(3)))
    assert len(result.request_offsets) == result.requests > 0
    everything = corpus.line_set([source.text])
    [all_seen] = per_session([result], everything)
    assert all_seen["requests_seen"] <= all_seen["requests"]  # short lines are never "seen"
    assert all_seen["shown_seen"] <= all_seen["shown"] and all_seen["accepted_seen"] <= all_seen["accepted"]
    [none_seen] = per_session([result], set())
    assert none_seen["requests_seen"] == none_seen["shown_seen"] == none_seen["retained_chars_seen"] == 0
    [plain] = per_session([result])
    assert "requests_seen" not in plain and plain["requests"] == all_seen["requests"]
    # a request counts as seen exactly when its line of the real file is in the set
    lines = [
        source.text[source.text.rfind("\n", 0, o) + 1 :].split("\n", 1)[0] for o in result.request_offsets
    ]
    expected = sum(line.strip() in everything for line in lines)
    assert all_seen["requests_seen"] == expected
