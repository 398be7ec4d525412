"""Where an arm's SFT blocks come from (the ``blocks`` recipe of :mod:`echo_lib.training.recipe`).

Every arm gets the same :class:`~echo_lib.training.recipe.Budget`; the baseline (or none, for
Echo and the naive harvests, whose gold differs) decides what fills it:

| baseline | blocks besides replay |
| --- | --- |
| none | the window's session code, weighted by its refinements (``learn.team_files_share`` of them team files: echo+repo) |
| ``public`` | public code, replay included (the control) |
| ``team-experience`` | the team's experience files (repo) |
| ``team-heldout`` | the held-out files themselves (the instrument; never decontaminated) |
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from echo_lib.core.config import EchoConfig
from echo_lib.training import recipe
from echo_lib.world import corpus

if TYPE_CHECKING:
    import pandas as pd

TEAM_SPLIT = {"team-experience": "experience", "team-heldout": "heldout"}


def heldout_lines(cfg: EchoConfig) -> set[str]:
    return recipe.heldout_line_set(f.text for f in corpus.scan(corpus.team_repos(cfg), cfg).select("heldout"))


def session_blocks(
    sft: pd.DataFrame,
    preference: pd.DataFrame | None,
    tokenizer,
    block_len: int,
    weights: recipe.Weights,
    drop_lines: set[str],
) -> list[dict[str, Any]]:
    """The window's session code as weighted blocks; ``preference`` says which proposals the users
    did not keep as shown (and what they were)."""
    outcomes: dict[str, tuple[str, str]] = {}
    if preference is not None and not preference.empty:
        outcomes = {r.request_id: (r.outcome, r.rejected) for r in preference.itertuples(index=False)}
    records = [
        {
            "prompt": recipe.without_lines(r["prompt"], drop_lines),
            "completion": r["completion"],
            "request_id": r["request_id"],
        }
        for r in sft.to_dict("records")
    ]
    return recipe.weighted_blocks(
        recipe.session_texts(records, outcomes, weights), tokenizer, block_len, weights
    )


def plan_blocks(
    cfg: EchoConfig,
    *,
    baseline: str | None,
    sft: pd.DataFrame,
    preference: pd.DataFrame | None,
    tokenizer,
    block_len: int,
    rows_per_step: int,
    steps: int | None,
    public_texts: list[str],
    window_end: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The arm's rows and what they hold; ``steps`` None = about two passes over the window's
    session blocks (with replay), at most ``learn.max_steps_cap``: the same for every arm of a window."""
    learn = cfg.learn
    decontaminate = learn.decontaminate_lines and baseline != "team-heldout"
    drop = heldout_lines(cfg) if decontaminate else set()
    weights = recipe.Weights(learn.kept_weight, learn.fixed_weight, learn.unlikelihood)
    sessions = session_blocks(sft, preference, tokenizer, block_len, weights, drop)
    if steps is None:
        wanted = math.ceil(2 * len(sessions) / (1 - learn.replay_share) / rows_per_step)
        steps = max(1, min(learn.max_steps_cap, wanted))
    public = [recipe.without_lines(t, drop) for t in public_texts]
    budget = recipe.Budget(steps, rows_per_step, block_len)
    common = dict(
        tokenizer=tokenizer,
        replay_share=learn.replay_share,
        public_texts=public,
        seed=learn.seed,
        window_end=window_end,
    )
    if baseline == "public":
        rows, info = recipe.arm_rows(budget, **common)
    elif baseline in TEAM_SPLIT:
        team = [
            recipe.without_lines(f.text, drop)
            for f in corpus.scan(corpus.team_repos(cfg), cfg).select(TEAM_SPLIT[baseline])
        ]
        rows, info = recipe.arm_rows(budget, team_texts=team, team_source=baseline, **common)
    else:
        team = None
        if learn.team_files_share > 0:
            team = [
                recipe.without_lines(f.text, drop)
                for f in corpus.scan(corpus.team_repos(cfg), cfg).select("experience")
            ]
        rows, info = recipe.arm_rows(
            budget,
            sessions=sessions,
            team_texts=team,
            team_share=learn.team_files_share,
            team_source="team-experience",
            **common,
        )
    info.update(steps=steps, decontaminated_lines=len(drop), window_session_blocks=len(sessions))
    return rows, info
