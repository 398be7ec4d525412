"""The completion engine on a real tiny model: batching, stopping, token healing, loading, MLflow."""

from __future__ import annotations

import argparse
import inspect
import json.decoder
import json.encoder
import math
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from echo_lib.agent.engine import (
    CompletionEngine,
    EngineSettings,
    HealingIndex,
    ModelLoadError,
    Proposal,
    consistent_with,
)

torch = pytest.importorskip("torch")

SOURCES = [inspect.getsource(m) for m in (json.decoder, json.encoder, textwrap, string, argparse)]

PREFIXES = [
    "",
    "x",
    "import ",
    "import o",
    "def foo(x):\n    retu",
    "class A:\n    def __init__(self",
    "x = 1\n",
    "    if x is None:\n",
    "        raise Val",
    "print('héllo wörld",
    "for i in range(10):\n        ",
    "# TODO: ",
    "return self._",
    "s = '''multi\nline",
    "d = {'a': 1, 'b'",
    "   ",
    "\n\n\n",
    "λ = lambda x: x ** 2  # ünïcode ",
    "from collections import (\n    Ordered",
    "@property\ndef name(self) -> str:\n",
    "emoji 😀 then ",
    "\t\tindent_with_tabs(",
    "def f():\n    pass\n" * 40,  # longer than the tiny model's context: left-truncated
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and its tokenizer, trained briefly (~5 s) on stdlib source, saved HF-style.

    300 small steps make proposals varied (early stops, multi-line text) instead of one repeated token.
    """
    from transformers import LlamaForCausalLM

    from echo_lib.agent.presets import build_model_config, get_preset
    from echo_lib.agent.tokenizer import train_tokenizer

    tok = train_tokenizer(SOURCES, 512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(build_model_config(get_preset("tiny"), tok))
    ids = tok("\n".join(SOURCES), add_special_tokens=False)["input_ids"]
    seq = 64
    data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine slows multi-threaded training of tiny matrices badly
    try:
        model.train()
        for _ in range(300):
            batch = data[torch.randint(0, len(data), (16,), generator=gen)]
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> CompletionEngine:
    return CompletionEngine.load(str(model_dir))


def with_settings(engine: CompletionEngine, **changes) -> CompletionEngine:
    return CompletionEngine(engine.model, engine.tokenizer, EngineSettings(**changes), engine.model_version)


def assert_same(a: list[Proposal], b: list[Proposal]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.text == y.text, (i, PREFIXES[i][-30:], x, y)
        assert x.num_tokens == y.num_tokens, (i, x, y)
        assert x.shown == y.shown, (i, x, y)
        assert abs(x.confidence - y.confidence) < 1e-5, (i, x, y)


# ---- loading and basic behaviour ---------------------------------------------------------------


def test_loads_a_local_directory_and_completes(engine: CompletionEngine, model_dir: Path) -> None:
    assert engine.model_version == str(model_dir.resolve())
    assert not engine.model.training
    assert next(engine.model.parameters()).dtype == torch.float32
    proposals = engine.complete(["def foo(x):\n    return x", "import o"])
    assert len(proposals) == 2
    for p in proposals:
        assert isinstance(p, Proposal)
        assert 0.0 <= p.confidence <= 1.0
        assert 1 <= p.num_tokens <= engine.settings.max_new_tokens


@pytest.mark.parametrize("mode", ["line", "lines"])
def test_batched_equals_one_at_a_time(engine: CompletionEngine, mode: str) -> None:
    one = with_settings(engine, mode=mode, batch_size=1).complete(PREFIXES)
    assert_same(with_settings(engine, mode=mode, batch_size=32).complete(PREFIXES), one)
    assert_same(with_settings(engine, mode=mode, batch_size=5).complete(PREFIXES), one)  # uneven chunks
    # the set is varied enough to exercise early stops and the length cap
    assert len({p.num_tokens for p in one}) > 2


def test_finished_rows_leave_the_batch(engine: CompletionEngine) -> None:
    rows: list[int] = []

    def record(_module, _args, kwargs):
        rows.append(kwargs["input_ids"].shape[0])

    handle = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        proposals = with_settings(engine, batch_size=32).complete(PREFIXES)
    finally:
        handle.remove()
    assert rows[0] == len(PREFIXES)
    assert rows == sorted(rows, reverse=True) and rows[-1] < rows[0]
    assert len(rows) == max(p.num_tokens for p in proposals)  # one forward per generated token
    assert sum(rows) == sum(p.num_tokens for p in proposals)  # and no work for finished rows


def test_line_mode_never_returns_a_newline(engine: CompletionEngine) -> None:
    line = with_settings(engine, mode="line").complete(PREFIXES)
    lines = with_settings(engine, mode="lines", max_lines=3).complete(PREFIXES)
    assert all("\n" not in p.text for p in line)
    assert all(p.text.count("\n") <= 2 for p in lines)
    assert any("\n" in p.text for p in lines), "the tiny model should produce some multi-line proposals"
    # a line proposal is the first line of the multi-line one (both are greedy)
    for a, b in zip(line, lines, strict=True):
        assert b.text.split("\n")[0] == a.text


def test_show_threshold_marks_shown(engine: CompletionEngine) -> None:
    base = engine.complete(PREFIXES)
    threshold = sorted(p.confidence for p in base)[len(base) // 2]
    gated = with_settings(engine, show_threshold=threshold).complete(PREFIXES)
    for p in gated:
        assert p.shown == (p.confidence >= threshold and p.text.strip() != "")
    assert any(p.shown for p in gated) and not all(p.shown for p in gated)
    assert not any(p.shown for p in with_settings(engine, show_threshold=1.01).complete(PREFIXES))


def test_empty_prefix_and_zero_budget(engine: CompletionEngine) -> None:
    [p] = engine.complete([""])
    assert isinstance(p.text, str) and p.num_tokens >= 1
    assert engine.complete([]) == []
    [z] = with_settings(engine, max_new_tokens=0).complete(["import o"])
    assert z == Proposal(text="", confidence=0.0, shown=False, num_tokens=0)


def test_suffixes_are_accepted_and_ignored(engine: CompletionEngine) -> None:
    prefixes = PREFIXES[:4]
    assert engine.complete(prefixes, ["\n"] * 4) == engine.complete(prefixes)
    with pytest.raises(ValueError, match="suffixes"):
        engine.complete(prefixes, ["x"])


def test_import_is_cheap() -> None:
    code = "import sys, echo_lib.agent.engine; print(sorted({'torch', 'transformers', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- token healing -----------------------------------------------------------------------------


def test_healing_constraint_on_a_hand_case() -> None:
    assert consistent_with(b"p", b"pri")
    assert consistent_with(b"pr", b"pri")
    assert consistent_with(b"pri", b"pri")
    assert consistent_with(b"print", b"pri")
    assert not consistent_with(b"x", b"pri")
    assert not consistent_with(b"pa", b"pri")
    assert not consistent_with(b"", b"pri")
    table = [b"p", b"pr", b"print", b"x", b"pri", b"private", b"pa", None, b"", b"prx", b"ri", b"print"]
    assert HealingIndex(table).allowed_ids(b"pri") == [0, 1, 2, 4, 5, 11]
    assert HealingIndex(table).allowed_ids(b"i") == []
    assert HealingIndex(table).allowed_ids(b"p") == [0, 1, 2, 4, 5, 6, 9, 11]


def test_token_bytes_are_exact(engine: CompletionEngine) -> None:
    tok = engine.tokenizer
    for text in ["    return x\n", "print('héllo wörld')", "emoji 😀\ttab"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert b"".join(engine.token_bytes[i] for i in ids) == text.encode()
    assert engine.token_bytes[tok.eos_token_id] is None and engine.token_bytes[tok.pad_token_id] is None


@pytest.mark.parametrize(
    "prefix", ["def foo(x):\n    retu", "import o", "        raise Val", "return self._", "x = 1\n"]
)
def test_healing_first_step_matches_a_direct_computation(engine: CompletionEngine, prefix: str) -> None:
    """The first token is the model's argmax among tokens consistent with the backed-off text."""
    tok = engine.tokenizer
    ids = tok(prefix, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    owed = engine.token_bytes[ids[-1]]
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids[:-1]])).logits[0, -1].float()
    allowed = engine.healing.allowed_ids(owed)
    assert ids[-1] in allowed and all(consistent_with(engine.token_bytes[i], owed) for i in allowed)
    logprobs = torch.log_softmax(logits[allowed], dim=-1)
    best = allowed[int(logprobs.argmax())]
    first = engine.token_bytes[best]
    expected = first[len(owed) :].decode() if len(first) >= len(owed) else ""

    [p] = with_settings(engine, max_new_tokens=1, mode="lines", max_lines=99).complete([prefix])
    assert p.text == expected
    assert p.num_tokens == 1
    assert p.confidence == pytest.approx(math.exp(float(logprobs.max())), abs=1e-5)


@pytest.mark.parametrize(
    "prefix", ["def foo(x):\n    retu", "import o", "x", "x = 1\n", "  self._", "s = 'café"]
)
def test_training_rows_are_split_where_the_engine_heals(engine: CompletionEngine, prefix: str) -> None:
    """SFT rows feed the model exactly the engine's prompt, and their target starts with the
    bytes the engine owes; DPO/KTO text rows split there too (a character split across tokens
    moves whole into the completion): one healing split for serving and training."""
    from echo_lib.agent.engine import token_byte_table
    from echo_lib.training.refine import heal_split, sft_ids

    table = token_byte_table(engine.tokenizer)
    prompt_ids, owed = engine.prompt_of(prefix)
    row = sft_ids(engine.tokenizer, prefix, "value)", max_length=engine.context_length)
    fed = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m == 0]
    target = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m == 1]
    assert fed == prompt_ids
    assert b"".join(table[t] for t in target[:-1]) == owed + b"value)\n"
    kept, [completion] = heal_split(engine.tokenizer, prefix, ["value)"])
    assert kept + completion == prefix + "value)\n"
    assert (
        completion.encode().startswith(owed)
        or prefix.encode().endswith(owed)
        and len(prefix) - len(kept) == 1
    )


def test_healed_proposals_continue_the_prefix(engine: CompletionEngine) -> None:
    """Healing regenerates the backed-off text; what is proposed is only what follows the cursor."""
    budget = with_settings(engine, mode="lines", max_lines=99, max_new_tokens=12)
    for prefix, p in zip(PREFIXES, budget.complete(PREFIXES), strict=True):
        full = (prefix + p.text).encode()
        assert full.startswith(prefix.encode())
        if p.num_tokens == 12 and p.text:  # no early stop: prefix + proposal re-tokenises cleanly
            assert engine.tokenizer.decode(engine.tokenizer(prefix + p.text)["input_ids"]) == prefix + p.text


# ---- load failures -----------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        CompletionEngine.load(str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json in"):
        CompletionEngine.load(str(tmp_path))


def test_corrupt_weights(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError) as err:
        CompletionEngine.load(str(broken))
    message = str(err.value)
    assert message.startswith(f"cannot load model {str(broken)!r}: weights in") and "\n" not in message


def test_incomplete_weights_are_not_silently_random(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    for f in model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(model_dir / "model.safetensors"))
    dropped = sorted(k for k in tensors if "layers.1." in k)
    save_file(
        {k: v for k, v in tensors.items() if k not in dropped},
        str(tmp_path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    with pytest.raises(ModelLoadError, match=r"lack .*layers\.1\.") as err:
        CompletionEngine.load(str(tmp_path))
    assert "\n" not in str(err.value)


def test_weights_file_missing(model_dir: Path, tmp_path: Path) -> None:
    for f in model_dir.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ModelLoadError, match="weights in"):
        CompletionEngine.load(str(tmp_path))


# ---- MLflow ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, str]:
    """A fresh sqlite MLflow store holding the tiny model as version 1 of 'echo-test' @champion."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/m.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("engine-test", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("echo-test")
    version = client.create_model_version(
        "echo-test", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("echo-test", "champion", version.version)
    return {"uri": uri, "run_id": run.info.run_id, "version": str(version.version)}


@pytest.mark.integration
def test_mlflow_round_trip(engine: CompletionEngine, mlflow_store: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    loaded = CompletionEngine.load(
        "models:/echo-test@champion", tracking_uri=mlflow_store["uri"], cache_dir=cache
    )
    assert loaded.model_version == "models:/echo-test/1"
    assert_same(loaded.complete(PREFIXES), engine.complete(PREFIXES))

    [entry] = list(cache.iterdir())
    stamp = (entry / "config.json").stat().st_mtime_ns
    again = CompletionEngine.load("models:/echo-test/1", tracking_uri=mlflow_store["uri"], cache_dir=cache)
    assert again.model_version == "models:/echo-test/1"
    assert list(cache.iterdir()) == [entry]  # same resolved version: the download is reused
    assert (entry / "config.json").stat().st_mtime_ns == stamp

    run_uri = f"runs:/{mlflow_store['run_id']}/model"
    by_run = CompletionEngine.load(run_uri, tracking_uri=mlflow_store["uri"], cache_dir=cache)
    assert by_run.model_version == run_uri
    assert_same(by_run.complete(PREFIXES[:6]), engine.complete(PREFIXES[:6]))


@pytest.mark.integration
def test_mlflow_failures_name_the_model(mlflow_store: dict[str, str], tmp_path: Path) -> None:
    uri = mlflow_store["uri"]
    with pytest.raises(ModelLoadError, match="registered model 'nonexistent' not found") as err:
        CompletionEngine.load("models:/nonexistent@champion", tracking_uri=uri, cache_dir=tmp_path)
    assert "models:/nonexistent@champion" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="registered model 'echo-test' has no alias 'gold'"):
        CompletionEngine.load("models:/echo-test@gold", tracking_uri=uri, cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="has no version 7"):
        CompletionEngine.load("models:/echo-test/7", tracking_uri=uri, cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="run 'deadbeef' not found"):
        CompletionEngine.load("runs:/deadbeef/model", tracking_uri=uri, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
def test_unknown_model_in_a_fresh_store(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nonexistent"):
        CompletionEngine.load(
            "models:/nonexistent@champion",
            tracking_uri=f"sqlite:///{tmp_path}/m.db",
            cache_dir=tmp_path / "c",
        )


def test_unreachable_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(ModelLoadError, match=r"cannot load model 'models:/echo@champion'") as err:
        CompletionEngine.load("models:/echo@champion", tracking_uri="http://127.0.0.1:9", cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and "127.0.0.1:9" in message
    assert "not found" not in message  # an unreachable store is not reported as a missing model


def test_a_models_show_policy_travels_with_it_and_decides_shown(
    engine: CompletionEngine, model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from echo_lib.agent.show_policy import ShowPolicy

    copy = tmp_path / "with-policy"
    shutil.copytree(model_dir, copy)
    base = engine.complete(PREFIXES)
    threshold = sorted(p.confidence for p in base)[len(base) // 2]
    ShowPolicy(threshold=threshold).save(copy)
    loaded = CompletionEngine.load(str(copy), EngineSettings(show_threshold=0.0))
    gated = loaded.complete(PREFIXES)
    assert [p.text for p in gated] == [
        p.text for p in base
    ]  # the policy changes what is shown, never what is proposed
    for p in gated:
        assert p.shown == (p.confidence >= threshold and p.text.strip() != "")
    assert any(p.shown for p in gated) and not all(p.shown for p in gated)
    # a config that asks for the plain threshold overrides the model's policy
    plain = CompletionEngine.load(str(copy), EngineSettings(show_threshold=0.0, use_model_policy=False))
    assert all(p.shown for p in plain.complete(PREFIXES) if p.text.strip())
