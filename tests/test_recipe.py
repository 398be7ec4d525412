"""The blocks recipe: equal budgets for every arm, refinement weights, on-policy negatives, one
decontamination rule, fresh draws each round (pure functions on a real trained tokenizer)."""

from __future__ import annotations

import inspect
import json as json_module

import pytest

from echo_lib.training import recipe

BLOCK = 32


@pytest.fixture(scope="module")
def tokenizer():
    from echo_lib.agent.tokenizer import train_tokenizer

    return train_tokenizer([inspect.getsource(json_module.decoder)] * 4, vocab_size=400)


def _source_lines() -> list[str]:
    return inspect.getsource(json_module.decoder).splitlines()


def _records(n: int = 12) -> list[dict]:
    """Consecutive requests in one file, as the world logs them: each prompt is the file so far."""
    lines = _source_lines()
    out = []
    for i in range(n):
        at = 30 + 4 * i
        cut = max(1, len(lines[at]) // 2)
        prompt = "\n".join(lines[:at]) + "\n" + lines[at][:cut]
        out.append({"request_id": f"r{i}", "prompt": prompt, "completion": lines[at][cut:]})
    return out


def test_weights_put_the_kept_code_first_and_average_one(tokenizer) -> None:
    records = _records()
    lines = _source_lines()
    # a last request at a line start: the user rejected "pass" and wrote the real line
    records.append(
        {"request_id": "r12", "prompt": "\n".join(lines[:90]) + "\n", "completion": lines[90].rstrip()}
    )
    indent = lines[90][: len(lines[90]) - len(lines[90].lstrip())]
    outcomes = {"r12": ("rejected_rewritten", indent + "pass")}
    weights = recipe.Weights(kept=2.0, fixed=4.0, unlikelihood=1.0)
    texts = recipe.session_texts(records, outcomes, weights)
    # one file, consecutive requests: the longest text holds every other request's kept code
    assert len(texts) == 1
    assert len(texts[0].spans) == len(records)
    for start, end, _ in texts[0].spans:
        assert texts[0].text[start:end].rstrip("\n") in {r["completion"] for r in records}
    assert sorted(w for _, _, w in texts[0].spans) == [2.0] * 12 + [4.0]
    blocks = recipe.weighted_blocks(texts, tokenizer, BLOCK, weights)
    assert blocks and all(len(b["input_ids"]) == BLOCK for b in blocks)
    for block in blocks:
        mean = sum(block["loss_weights"]) / len(block["loss_weights"])
        assert mean == pytest.approx(1.0)
    heavy = [b for b in blocks if max(b["loss_weights"]) > min(b["loss_weights"])]
    assert heavy, "the kept code is weighted above the code around it"
    negatives = [(b, i) for b in blocks for i, t in enumerate(b["negative_ids"]) if t != recipe.IGNORE]
    assert len(negatives) == 1  # the one rejected proposal's diverging token
    block, i = negatives[0]
    assert block["negative_ids"][i] != block["input_ids"][i]
    assert tokenizer.decode([block["negative_ids"][i]]).strip() in "pass"


def test_a_proposal_the_user_kept_a_prefix_of_gives_no_negative(tokenizer) -> None:
    records = _records(1)
    kept = records[0]["completion"]
    outcomes = {"r0": ("rejected_rewritten", kept[: len(kept) // 2])}
    weights = recipe.Weights(unlikelihood=1.0)
    blocks = recipe.weighted_blocks(
        recipe.session_texts(records, outcomes, weights), tokenizer, BLOCK, weights
    )
    assert all(t == recipe.IGNORE for b in blocks for t in b["negative_ids"])


def test_accepted_edits_are_weighted_as_fixed_but_never_negatives(tokenizer) -> None:
    records = _records(1)
    outcomes = {"r0": ("accepted_then_edited", "pass")}
    weights = recipe.Weights(unlikelihood=1.0)
    texts = recipe.session_texts(records, outcomes, weights)
    assert texts[0].spans[0][2] == weights.fixed
    assert texts[0].negatives == []  # the metric counts it as accepted: not a negative


@pytest.mark.parametrize(
    "arm",
    [
        dict(sessions=True),
        dict(sessions=True, team=True, team_share=0.5),
        dict(team=True),
        dict(),  # control: public code only
    ],
    ids=["echo", "echo+repo", "repo", "control"],
)
def test_every_arm_gets_the_same_rows_and_loss_tokens(tokenizer, arm: dict) -> None:
    lines = _source_lines()
    public = ["\n".join(lines[:150]), "\n".join(lines[150:])]
    team = ["\n".join(lines[40:200])]
    weights = recipe.Weights()
    sessions = recipe.weighted_blocks(
        recipe.session_texts(_records(), {}, weights), tokenizer, BLOCK, weights
    )
    budget = recipe.Budget(steps=5, rows_per_step=4, block_len=BLOCK)
    rows, info = recipe.arm_rows(
        budget,
        tokenizer=tokenizer,
        replay_share=0.25,
        public_texts=public,
        sessions=sessions if arm.get("sessions") else None,
        team_texts=team if arm.get("team") else None,
        team_share=arm.get("team_share", 0.0),
        seed=0,
        window_end="2026-01-05",
    )
    assert len(rows) == info["rows"] == budget.rows == 20
    sources = {r["source"] for r in rows}
    if arm:
        assert info["replay_rows"] == 5
    else:
        assert sources == {"public"} and info["team_loss_tokens"] == 0
    if arm.get("sessions") and not arm.get("team"):
        assert sources == {"session", "replay"}
    if arm.get("team") and arm.get("sessions"):
        assert sources == {"session", "team", "replay"}
    # every block is full: every arm's loss tokens are rows x (block length - 1), exactly
    assert all(len(r["input_ids"]) == BLOCK for r in rows)
    assert info["loss_tokens"] == budget.rows * (BLOCK - 1)


def test_draws_move_with_the_round_and_repeat_within_it(tokenizer) -> None:
    texts = ["\n".join(_source_lines())]

    def draw(day: str) -> list[list[int]]:
        seed = recipe.data_seed(0, day, "team_blocks")
        return [r["input_ids"] for r in recipe.file_blocks(texts, 6, tokenizer, BLOCK, seed, source="team")]

    assert draw("2026-01-05") == draw("2026-01-05")
    assert draw("2026-01-05") != draw("2026-01-06")
    assert recipe.data_seed(0, "2026-01-05", "replay") != recipe.data_seed(0, "2026-01-05", "team_blocks")


def test_decontamination_drops_held_out_lines_and_keeps_the_rest() -> None:
    heldout = "def shared_helper_function(x):\n    return x\nshort = 1\n"
    lines = recipe.heldout_line_set([heldout])
    assert lines == {"def shared_helper_function(x):"}  # short lines are idioms, not leaks
    text = "import os\n    def shared_helper_function(x):\n    return x\n"
    assert recipe.without_lines(text, lines) == "import os\n    return x\n"


def test_cycle_to_makes_whole_passes_before_repeating() -> None:
    rows = [{"i": i} for i in range(4)]
    out = recipe.cycle_to(rows, 10, seed=1)
    assert len(out) == 10
    assert sorted(r["i"] for r in out[:4]) == [0, 1, 2, 3]
    assert sorted(r["i"] for r in out[4:8]) == [0, 1, 2, 3]


def test_weighted_loss_is_cross_entropy_at_unit_weights_and_unlikelihood_pushes_down() -> None:
    import torch
    import torch.nn.functional as F

    from echo_lib.training.weighted import weighted_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    ids = torch.randint(0, 11, (2, 6))
    ones = torch.ones(2, 6)
    none = torch.full((2, 6), -100)
    total, ce, ul = weighted_loss(logits, ids, ones, none, unlikelihood=1.0)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5) and ul.item() == 0.0
    negatives = none.clone()
    negatives[0, 3] = (ids[0, 3] + 1) % 11
    total, _, ul = weighted_loss(logits, ids, ones, negatives, unlikelihood=1.0)
    assert ul.item() > 0
    total.backward()
    # the gradient at the negative's position raises nothing on the negative token's logit
    assert logits.grad[0, 2, negatives[0, 3]].item() > 0  # loss grows with that logit: descent lowers it


def test_short_files_fill_whole_blocks_and_a_budget_that_cannot_be_met_fails(tokenizer) -> None:
    short = ["x = 1\ny = 2\n", "def f():\n    return 3\n", "import os\nprint(os.sep)\n"]
    blocks = recipe.file_blocks(short, 10, tokenizer, BLOCK, seed=0, source="team")
    assert len(blocks) == 10 and all(len(b["input_ids"]) == BLOCK for b in blocks)
    assert tokenizer.eos_token_id in blocks[0]["input_ids"]  # files joined as a stream
    budget = recipe.Budget(steps=2, rows_per_step=4, block_len=BLOCK)
    with pytest.raises(ValueError, match="cannot fill a step"):
        recipe.arm_rows(
            budget,
            tokenizer=tokenizer,
            replay_share=0.25,
            public_texts=[],
            team_texts=short,
            seed=0,
            window_end="2026-01-05",
        )


@pytest.mark.parametrize(
    ("kept", "proposal"),
    [
        ("        end += 1", "zzz"),
        ("    return value", "            return value"),
        ("foo_bar(x)", "foo_baz(y)"),
    ],
    ids=["other-code", "other-indent", "mid-word"],
)
def test_a_rejected_proposal_always_yields_its_diverging_token(tokenizer, kept: str, proposal: str) -> None:
    prompt = "def f(value):\n"
    hit = recipe._diverging_token(tokenizer, prompt, kept + "\n", proposal)
    assert hit is not None
    index, token = hit
    kept_ids = tokenizer(prompt + kept + "\n", add_special_tokens=False)["input_ids"]
    prop_ids = tokenizer(prompt + proposal, add_special_tokens=False)["input_ids"]
    assert kept_ids[:index] == prop_ids[:index] and token == prop_ids[index] != kept_ids[index]
