"""Prefix reuse on a real tiny model and real world sessions: the same proposals as the plain decoder,
under any memory bound, and a prompt window that training rows share with serving."""

from __future__ import annotations

import random
from datetime import date

import pytest

from echo_lib.agent.engine import CompletionEngine, EngineSettings, Proposal, truncate_prompt
from echo_lib.core.config import EngineConfig, load_config
from echo_lib.world.behaviour import BehaviourParams
from echo_lib.world.delivery import DeliveryParams
from echo_lib.world.simulate import plan_day, run_sessions
from tests.test_engine import model_dir  # noqa: F401  (the tiny trained model fixture)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # on a busy 2-core machine two torch threads spin against each other: decoding slows many-fold
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(model_dir) -> CompletionEngine:  # noqa: F811
    return CompletionEngine.load(str(model_dir))


def engine_with(base: CompletionEngine, **settings) -> CompletionEngine:
    return CompletionEngine(base.model, base.tokenizer, EngineSettings(**settings), base.model_version)


@pytest.fixture(scope="module")
def world_calls(base: CompletionEngine) -> dict[int, list[list[str]]]:
    """Each engine call's prefixes, as real world sessions send them to the plain engine, per step."""
    from echo_lib.world.runner import world_files

    cfg = load_config().config
    behaviour = BehaviourParams()
    specs = plan_day(world_files(cfg, "experience"), date(2000, 1, 1), 4, 7, behaviour, DeliveryParams.none())
    calls: dict[int, list[list[str]]] = {}
    for step in (1, 32):
        plain = engine_with(base, prompt_window_step=step)
        recorded: list[list[str]] = []

        class Recording:
            def __init__(self, inner: CompletionEngine, log: list[list[str]]):
                self.inner, self.log, self.model_version = inner, log, inner.model_version

            def complete(self, prefixes, suffixes=None):
                self.log.append(list(prefixes))
                return self.inner.complete(prefixes, suffixes)

        run_sessions(specs, Recording(plain, recorded), behaviour, concurrency=4)
        calls[step] = recorded[:60]  # enough consecutive requests per session to reuse
    return calls


def assert_same(a: list[Proposal], b: list[Proposal]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.text, x.num_tokens, x.shown) == (y.text, y.num_tokens, y.shown), (x, y)
        assert abs(x.confidence - y.confidence) < 1e-5, (x, y)


@pytest.mark.parametrize("step", [1, 32])
def test_prefix_cache_proposes_what_the_plain_engine_does(base, world_calls, step: int) -> None:
    plain = engine_with(base, prompt_window_step=step)
    cached = engine_with(base, prompt_window_step=step, prefix_cache=True, batch_size=3)  # uneven chunks
    for prefixes in world_calls[step]:
        assert_same(cached.complete(prefixes), plain.complete(prefixes))
    store = cached.prefix_store
    assert store is not None and store.lookups == sum(map(len, world_calls[step]))
    if step > 1:  # a window that stays put is what makes reuse possible on 4000-character prefixes
        assert store.reused_tokens > 0.5 * store.prompt_tokens


def test_eviction_under_a_tiny_bound_keeps_proposals(base, world_calls) -> None:
    plain = engine_with(base, prompt_window_step=32)
    bound = 0.05  # MiB: a handful of the tiny model's prompts
    cached = engine_with(base, prompt_window_step=32, prefix_cache=True, prefix_cache_mb=bound)
    most = 0
    for prefixes in world_calls[32]:
        assert_same(cached.complete(prefixes), plain.complete(prefixes))
        store = cached.prefix_store
        assert store is not None and store.bytes <= bound * (1 << 20)
        most = max(most, len(store))
    assert 0 < most < 4  # sessions' prompts pushed each other out
    assert store.reused_tokens > 0


def test_a_repeated_prompt_runs_one_token(base) -> None:
    """The second request of a session runs only the tokens its cached prompt lacks."""
    text = (
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n\n\ndef sub(a, b):\n    ret"
    )
    engine = engine_with(base, prefix_cache=True)
    widths: list[int] = []
    handle = engine.model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        first = engine.complete([text])
        widths.clear()
        again = engine.complete([text, text + "urn a"])
    finally:
        handle.remove()
    assert_same(again[:1], first)
    # the same prompt runs its last token; the longer one its new tokens; decoding one at a time
    assert widths[0] <= len(base.tokenizer("urn a", add_special_tokens=False)["input_ids"]) + 1
    assert all(w == 1 for w in widths[1:])


@pytest.mark.parametrize(("draft_tokens", "cache"), [(4, False), (8, True)])
def test_drafts_propose_what_the_plain_engine_does(base, world_calls, draft_tokens: int, cache: bool) -> None:
    """Verifying drafts keeps exactly the tokens one-token steps choose, on real world traffic."""
    plain = engine_with(base, batch_size=3)
    # step_tokens far above the batch: every step carries drafts, kept or not
    drafting = engine_with(base, draft_tokens=draft_tokens, step_tokens=256, prefix_cache=cache, batch_size=3)
    widths: list[int] = []
    handle = base.model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    forwards = {"plain": 0, "drafting": 0}
    try:
        for prefixes in world_calls[1][:30]:
            before = len(widths)
            expected = plain.complete(prefixes)
            forwards["plain"] += len(widths) - before
            before = len(widths)
            assert_same(drafting.complete(prefixes), expected)
            forwards["drafting"] += len(widths) - before
    finally:
        handle.remove()
    assert draft_tokens + 1 in widths  # full drafts were fed (and, by the check above, verified)
    assert forwards["drafting"] < forwards["plain"], forwards  # some drafts were kept


@pytest.mark.parametrize("step", [1, 8, 32])
def test_the_window_keeps_between_budget_minus_step_and_budget(step: int) -> None:
    rng = random.Random(step)
    for _ in range(200):
        ids = [rng.randrange(50) for _ in range(rng.randrange(1, 400))]
        kept = truncate_prompt(ids, 100, step)
        assert ids[len(ids) - len(kept) :] == kept
        assert len(kept) == len(ids) if len(ids) <= 100 else 100 - step < len(kept) <= 100
    assert truncate_prompt(list(range(300)), 100, 1) == list(range(200, 300))


def test_the_window_start_survives_text_dropped_at_the_front() -> None:
    """A session typing with a sliding character window: the front loses what the end gains."""
    rng = random.Random(0)
    doc = [rng.randrange(1000) for _ in range(3000)]
    kept_start, moves = None, 0
    for end in range(1000, 2000):
        ids = doc[end - 900 : end]  # the client's window slides with the cursor
        kept = truncate_prompt(ids, 208, 64)
        start = end - len(kept)  # the window's start as a document position
        moves += start != kept_start
        kept_start = start
    assert moves < 1000 / 16  # about every 32 tokens; aligned to the prefix's front it moves every token


def test_training_rows_see_the_serving_prompt(base) -> None:
    from echo_lib.training.refine import prompt_window, sft_ids

    step = 32
    engine = engine_with(base, prompt_window_step=step)
    prefix = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(60)) + "def g(y):\n    re"
    ids = base.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    prompt = engine._prepare(list(ids)).prompt
    assert len(ids) - 1 > engine._max_prompt_tokens() and len(prompt) < engine._max_prompt_tokens()
    window = prompt_window(EngineConfig(prompt_window_step=step), base.context_length)
    row = sft_ids(base.tokenizer, prefix, "turn y", base.context_length, **window)
    assert row is not None
    assert row["input_ids"][: len(prompt)] == prompt and row["completion_mask"][len(prompt)] == 1
    assert row["completion_mask"][len(prompt) - 1] == 0
