"""The show policy: request-time features, the logistic fit, the calibration rule, and the CIs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from echo_lib.agent.show_policy import (
    FEATURES,
    OperatingPoint,
    ShowPolicy,
    choose_threshold,
    fit_logistic,
    operating_point,
    request_features,
)
from echo_lib.core.stats import bootstrap_ratio


def _feature(prefix: str, proposal: str, name: str, confidence: float = 0.5) -> float:
    return request_features(prefix, proposal, confidence)[FEATURES.index(name)]


def test_features_describe_the_cursor_and_the_proposal() -> None:
    prefix = "import os\n\ndef walk(root):\n    for path in os."
    assert len(request_features(prefix, "walk(root):", 0.4)) == len(FEATURES)
    assert _feature(prefix, "walk(root):", "after_dot") == 1.0
    assert _feature(prefix, "walk(root):", "line_start") == 0.0
    assert _feature(prefix, "walk(root):", "identifiers_known") == 1.0  # walk and root occur above
    assert _feature(prefix, "listdir(base):", "identifiers_known") == 0.0
    assert _feature(prefix, "walk(root):", "opens_block") == 1.0
    assert _feature(prefix, "walk(root", "brackets_balanced") == 0.0
    start = "def f(x):\n    return x\n    "
    assert _feature(start, "return x", "line_start") == 1.0
    assert _feature(start, "return x", "repeats_previous_line") == 1.0
    assert _feature(start, "return x", "log_indent") == pytest.approx(1.6094379)  # log1p(4)
    assert _feature("", "x = 1", "line_start") == 1.0  # an empty file


def test_choose_threshold_maximises_the_smaller_gain() -> None:
    # six proposals on 10 requests, best first; accepted ones retain 5 characters each
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    accepted = [True, True, False, True, False, False]
    retained = [5 if a else 0 for a in accepted]
    reference = OperatingPoint(requests=10, shown=6, accepted=2, retained_chars=10)  # 33%, 1.0/request
    threshold, chosen, objective = choose_threshold(scores, accepted, retained, 10, reference)
    # showing the top 4 keeps all 15 characters (+50%) at 75% acceptance (+125%): min gain +50%
    assert threshold == 0.6 and (chosen.shown, chosen.accepted, chosen.retained_chars) == (4, 3, 15)
    assert objective == pytest.approx(0.5)
    assert operating_point(scores, accepted, retained, 10, threshold) == chosen
    # a higher threshold would win acceptance (100%) by giving users less (10 chars): not chosen
    # a floor on how often something is shown is respected
    floor, at_floor, _ = choose_threshold(scores, accepted, retained, 10, reference, min_shown_rate=0.5)
    assert at_floor.shown >= 5 and floor == 0.5


def test_a_policy_round_trips_and_scores_like_its_fit(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows, labels = [], []
    for _ in range(400):
        confidence = rng.random()
        known = rng.random() < 0.5
        prefix = "value = compute(data)\n" + ("result = val" if known else "result = xyz")
        proposal = "value + data" if known else "other + thing"
        rows.append(request_features(prefix, proposal, confidence))
        labels.append(rng.random() < 0.1 + 0.5 * confidence + 0.3 * known)
    policy = ShowPolicy(threshold=0.4, kind="logistic", **fit_logistic(rows, labels))
    coef = dict(zip(FEATURES, policy.coef, strict=True))
    assert coef["confidence"] > 0 and coef["identifiers_known"] > 0  # it learned what drives accepts
    policy.save(tmp_path)
    again = ShowPolicy.load(tmp_path)
    assert again == policy
    assert again.score_features(rows[0]) == pytest.approx(policy.score_features(rows[0]))
    assert 0.0 < again.score("value = compute(data)\nresult = val", "value + data", 0.7) < 1.0
    assert 0.0 < again.score("x" * 500, "y" * 300, 0.7) < 1.0  # far outside the fit: clipped, not saturated
    assert ShowPolicy.load(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="both accepted and not-accepted"):
        fit_logistic(rows[:5], [True] * 5)
    with pytest.raises(ValueError, match="differ from this engine"):
        ShowPolicy(threshold=0.5, kind="logistic", features=("a",), mean=(0.0,), scale=(1.0,), coef=(1.0,))


def test_bootstrap_ratio_single_and_paired() -> None:
    alone = bootstrap_ratio([1, 2, 0, 3], [10, 10, 5, 12])
    assert alone["value"] == pytest.approx(6 / 37) and alone["ci_low"] <= alone["value"] <= alone["ci_high"]
    paired = bootstrap_ratio([2, 3, 1, 4], [10, 10, 5, 12], base_num=[1, 2, 0, 3], base_den=[10, 10, 5, 12])
    assert paired["value"] == pytest.approx(4 / 37) and paired["ci_low"] > 0
    assert paired["relative"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="same sessions"):
        bootstrap_ratio([1], [2], base_num=[1, 2], base_den=[2, 2])
