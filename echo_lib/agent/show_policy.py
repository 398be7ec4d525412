"""When to show a proposal: a model version's show policy, learned from what users did.

Raw code teaches a model *what* to propose; only telemetry says *which* proposals people take.
A show policy scores a proposal at request time from what the engine has then (its confidence,
the proposal's shape, where the cursor is, whether the proposal's identifiers occur in the
prefix) and shows it when the score reaches the version's threshold:

* ``confidence``: the score is the model's confidence (v0, and the ablation without a policy);
* ``logistic``: the score is P(accept) from a logistic regression fitted on the outcomes of the
  model's own proposals on canary traffic (:mod:`echo_lib.training.calibrate`).

The policy travels with the model version as ``show_policy.json`` in its directory, so serving
applies exactly what calibration chose. Features are computed from the prefix and the proposal
text only, so the engine and anything replaying telemetry compute the same numbers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

POLICY_FILE = "show_policy.json"
CLIP = 5.0  # standard deviations
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

FEATURES = (
    "confidence",
    "log_confidence",
    "log_proposal_chars",
    "line_start",
    "log_column",
    "log_indent",
    "after_dot",
    "after_open",
    "after_equals",
    "after_comma",
    "in_word",
    "identifiers_known",
    "log_identifiers_unknown",
    "opens_block",
    "brackets_balanced",
    "repeats_previous_line",
)


def request_features(prefix: str, proposal: str, confidence: float) -> list[float]:
    """The feature vector (in :data:`FEATURES` order) of one proposal at one cursor position."""
    line_begin = prefix.rfind("\n") + 1
    before = prefix[line_begin:]
    stripped = before.lstrip()
    indent = len(before) - len(stripped)
    last = prefix[-1:] if prefix else ""
    names = IDENTIFIER.findall(proposal)
    if names:
        known_names = set(IDENTIFIER.findall(prefix[-4000:]))
        unknown = sum(name not in known_names for name in names)
        known = 1.0 - unknown / len(names)
    else:
        unknown, known = 0, 1.0
    line = before + proposal
    balance = sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
    previous = prefix[: max(line_begin - 1, 0)]
    previous_line = previous[previous.rfind("\n") + 1 :].strip()
    return [
        confidence,
        math.log(max(confidence, 1e-6)),
        math.log1p(len(proposal)),
        float(not stripped),
        math.log1p(len(stripped)),
        math.log1p(indent),
        float(last == "."),
        float(last in "([{"),
        float(last == "="),
        float(before.endswith(", ")),
        float(bool(last) and (last.isalnum() or last == "_")),
        known,
        math.log1p(unknown),
        float(proposal.rstrip().endswith(":")),
        float(balance == 0),
        float(bool(previous_line) and (stripped + proposal).strip() == previous_line),
    ]


@dataclass(frozen=True)
class ShowPolicy:
    """Show a proposal when its score reaches ``threshold`` (and it is not blank)."""

    threshold: float
    kind: Literal["confidence", "logistic"] = "confidence"
    features: tuple[str, ...] = FEATURES
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)  # what the rule saw (logged, not used)

    def __post_init__(self) -> None:
        if self.kind not in ("confidence", "logistic"):
            raise ValueError(f"unknown show policy kind {self.kind!r}")
        if self.kind == "logistic":
            n = len(self.features)
            if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
                raise ValueError("a logistic show policy needs mean, scale and coef for every feature")
            if tuple(self.features) != FEATURES:
                raise ValueError(
                    f"show policy features {list(self.features)} differ from this engine's {list(FEATURES)}"
                )

    def score(self, prefix: str, proposal: str, confidence: float) -> float:
        if self.kind == "confidence":
            return confidence
        return self.score_features(request_features(prefix, proposal, confidence))

    def score_features(self, x: Sequence[float]) -> float:
        if self.kind == "confidence":
            return float(x[0])
        # standardised values are clipped: a feature far outside what calibration saw must not
        # decide alone
        z = self.intercept + sum(
            c * min(max((v - m) / s, -CLIP), CLIP)
            for c, v, m, s in zip(self.coef, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def shows(self, prefix: str, proposal: str, confidence: float) -> bool:
        return bool(proposal.strip()) and self.score(prefix, proposal, confidence) >= self.threshold

    def describe(self) -> str:
        return f"{self.kind}, threshold {self.threshold:.3f}"

    # ---- files ------------------------------------------------------------------------------------

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / POLICY_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> ShowPolicy | None:
        """The policy saved with a model, or None for a model that has none (v0)."""
        path = Path(model_dir) / POLICY_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        for key in ("features", "mean", "scale", "coef"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def fit_logistic(x: Sequence[Sequence[float]], y: Sequence[bool], *, seed: int = 0) -> dict[str, Any]:
    """Standardised L2 logistic regression (scikit-learn); returns the parameters a policy stores."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(x, dtype=float)
    labels = np.asarray(y, dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError("a show policy needs both accepted and not-accepted proposals to learn from")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    model.fit((features - mean) / scale, labels)
    return {
        "mean": tuple(float(v) for v in mean),
        "scale": tuple(float(v) for v in scale),
        "coef": tuple(float(v) for v in model.coef_[0]),
        "intercept": float(model.intercept_[0]),
    }


@dataclass(frozen=True)
class OperatingPoint:
    """What a show rule gives users on some traffic: the two numbers every claim reports."""

    requests: int
    shown: int
    accepted: int
    retained_chars: int

    @property
    def acceptance(self) -> float:
        return self.accepted / self.shown if self.shown else 0.0

    @property
    def retained_per_request(self) -> float:
        return self.retained_chars / self.requests if self.requests else 0.0

    @property
    def shown_rate(self) -> float:
        return self.shown / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "shown": self.shown,
            "accepted": self.accepted,
            "retained_chars": self.retained_chars,
            "acceptance": self.acceptance,
            "retained_per_request": self.retained_per_request,
            "shown_rate": self.shown_rate,
        }


def operating_point(
    scores: Sequence[float],
    accepted: Sequence[bool],
    retained: Sequence[int],
    requests: int,
    threshold: float,
) -> OperatingPoint:
    keep = [i for i, s in enumerate(scores) if s >= threshold]
    return OperatingPoint(
        requests=requests,
        shown=len(keep),
        accepted=sum(bool(accepted[i]) for i in keep),
        retained_chars=sum(int(retained[i]) for i in keep),
    )


def choose_threshold(
    scores: Sequence[float],
    accepted: Sequence[bool],
    retained: Sequence[int],
    requests: int,
    reference: OperatingPoint,
    *,
    min_shown_rate: float = 0.0,
) -> tuple[float, OperatingPoint, float]:
    """The calibration rule: the threshold that maximises the *smaller* of the two relative gains
    over ``reference`` (the champion on the same canary traffic), acceptance among shown and
    retained characters per request. A threshold may not show fewer than ``min_shown_rate`` of the
    requests. Returns (threshold, its operating point, the objective). No free parameter: a model
    cannot win one number by giving back the other.
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    minimum = max(1, math.ceil(min_shown_rate * requests))
    eps = 1e-9
    best: tuple[float, float, int, int, int] | None = None  # objective, threshold, shown, acc, kept
    shown = acc = kept = 0
    for rank, i in enumerate(order):
        shown += 1
        acc += bool(accepted[i])
        kept += int(retained[i])
        if rank + 1 < len(order) and scores[order[rank + 1]] == scores[i]:
            continue  # a threshold cannot split equal scores
        if shown < minimum:
            continue
        a_gain = (acc / shown - reference.acceptance) / max(reference.acceptance, eps)
        r_gain = (kept / requests - reference.retained_per_request) / max(reference.retained_per_request, eps)
        objective = min(a_gain, r_gain)
        if best is None or objective > best[0]:
            best = (objective, float(scores[i]), shown, acc, kept)
    if best is None:
        return 1.0, OperatingPoint(requests, 0, 0, 0), float("-inf")
    objective, threshold, shown, acc, kept = best
    return threshold, OperatingPoint(requests, shown, acc, kept), objective
