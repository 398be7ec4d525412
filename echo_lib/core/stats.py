"""One session bootstrap for every ratio Echo reports (acceptance among shown, retained characters
per request, shown rate), alone or as a paired difference between two models on the same sessions.

Sessions are the unit of resampling: requests within a session are not independent (the same
developer, the same file), so a per-request CI would be too narrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RESAMPLES = 2000


def signed(value: float, fmt: str) -> str:
    """``value`` with its sign, formatted (``".2%"``, ``".3f"``); never "-0.000" for what rounds
    to zero."""
    text = format(value, "+" + fmt)
    return format(0.0, "+" + fmt) if float(text.rstrip("%")) == 0 else text


def ratio(num: Sequence[float], den: Sequence[float]) -> float:
    total = float(sum(den))
    return float(sum(num)) / total if total else 0.0


def bootstrap_ratio(
    num: Sequence[float],
    den: Sequence[float],
    *,
    base_num: Sequence[float] | None = None,
    base_den: Sequence[float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``sum(num) / sum(den)`` over sessions with a 95% percentile CI; with ``base_*`` (the same
    sessions, another model) the paired difference new - base, resampling sessions jointly.

    Returns ``value`` (the ratio or the difference), ``ci_low``, ``ci_high``, ``sessions`` and, for a
    difference, ``base`` and ``relative`` (difference / base ratio)."""
    import numpy as np

    n, d = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    paired = base_num is not None
    if paired:
        bn, bd = np.asarray(base_num, dtype=float), np.asarray(base_den, dtype=float)
        if not (len(bn) == len(bd) == len(n) == len(d)):
            raise ValueError("a paired bootstrap needs the same sessions for both models")
    if len(n) != len(d):
        raise ValueError("numerator and denominator need one value per session")
    if len(n) == 0:
        raise ValueError("a bootstrap needs at least one session")

    def rate(x, y, axis=None):
        top, bottom = x.sum(axis=axis), y.sum(axis=axis)
        return np.divide(top, bottom, out=np.zeros_like(top, dtype=float), where=bottom > 0)

    observed = float(rate(n, d))
    out: dict[str, Any] = {"sessions": len(n), "resamples": resamples}
    if paired:
        base = float(rate(bn, bd))
        observed -= base
        out.update(base=base, relative=observed / base if base else 0.0)
    picks = np.random.default_rng(seed).integers(0, len(n), size=(resamples, len(n)))
    draws = rate(n[picks], d[picks], axis=1)
    if paired:
        draws = draws - rate(bn[picks], bd[picks], axis=1)
    low, high = (float(x) for x in np.percentile(draws, [2.5, 97.5])) if len(n) > 1 else (observed, observed)
    out.update(value=observed, ci_low=low, ci_high=high)
    return out
