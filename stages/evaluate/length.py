"""The length-controlled (LC) win rate: what the judge would say if both answers were the same length.

LLM judges prefer longer answers, and DPO learns to write longer ones, so a raw win rate can measure length as much
as quality. As AlpacaEval 2 does it (Dubois et al. 2024, "Length-Controlled AlpacaEval"), a logistic regression of
the judge's verdict on the length difference, read off at a difference of zero:

    P(challenger preferred) = sigmoid(b0 + b1 * tanh((len_challenger - len_baseline) / sd))

- the verdict per pair judged: 1 a win of the challenger, 0 a loss, 0.5 a tie (as in the raw rate over all pairs,
  the one the gate reads; a fractional target is the quasi-binomial fit, the same Newton steps);
- the length in characters; `sd` the standard deviation of the differences (fixed once, from all pairs), and tanh
  so that one very long answer cannot pull the slope;
- a small ridge penalty on the slope only (SLOPE_PENALTY): when length separates wins from losses completely the
  unpenalised slope has no finite maximum; the intercept is never penalised, so with no length effect the LC rate is
  the raw one;
- prompts decided without the judge (forfeits: a model answered only blank) are not the judge's preference and have
  no length to control for: they count as they are, a loss for the side that could not answer, so a model that
  answers blank fails an LC gate as it fails a raw one.

LC rate = (judged pairs x sigmoid(b0) + the forfeits' points) / all pairs. Its 95% interval: percentile bootstrap,
BOOTSTRAP resamples of the pairs (judged and forfeits together) with a fixed seed, every resample refitted. The fit is
a few Newton (IRLS) steps on two parameters, vectorised over the resamples with numpy (imported where used: the
arena imports this package and starts without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BOOTSTRAP = 1000  # resamples for the interval: ~1% Monte Carlo error on its ends, a few ms per 100 pairs
SEED = 0  # the same pairs give the same interval on every run
SLOPE_PENALTY = 1.0  # ridge on the slope (x in [-1, 1]): negligible against tens of pairs, finite under separation
NEWTON_STEPS = 30  # converges in 5-8 from zero
MAX_LOGIT = 20.0  # |b0|, |b1| stop here: a rate of 1 - 2e-9 is 1 at the report's precision, and a fit whose rate
# runs to 0 or 1 (every pair won) converges instead of stepping on forever
MAX_CELLS = 2_000_000  # resamples x pairs fitted at once (16 MB per float array), so memory stays bounded
FEATURE = "tanh(chars diff / sd)"


@dataclass(frozen=True)
class LengthControlled:
    """The LC win rate of the challenger with its bootstrap interval, and the fit behind it."""

    rate: float | None  # None: no pairs
    interval: tuple[float, float]
    slope: float | None  # b1: > 0 the judge prefers the longer text; None: no judged pair
    length_sd: float | None  # sd of the length differences (characters) that tanh's argument is divided by
    judged: int  # pairs the judge decided (the fit's data)
    fixed: int  # pairs counted as they are (forfeits)

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {"win_rate": r(self.rate), "ci95": [r(x) for x in self.interval], "slope": r(self.slope),
                "length_sd": None if self.length_sd is None else round(self.length_sd, 1), "judged": self.judged,
                "fixed": self.fixed, "feature": FEATURE, "ties": "half", "interval": f"bootstrap {BOOTSTRAP}"}


def length_controlled(points: Sequence[float], length_diffs: Sequence[float], fixed: Sequence[float] = (), *,
                      resamples: int = BOOTSTRAP, seed: int = SEED) -> LengthControlled:
    """The LC win rate from the judged pairs' `points` (1 win, 0.5 tie, 0 loss of the challenger) and `length_diffs`
    (challenger minus baseline, characters), and the `fixed` points of pairs decided without the judge."""
    import numpy as np

    if len(points) != len(length_diffs):
        raise ValueError(f"one length difference per judged pair: got {len(points)} points, {len(length_diffs)} "
                         "differences")
    y = np.asarray(points, dtype=float)
    kept = np.asarray(fixed, dtype=float)
    if ((y < 0) | (y > 1)).any() or ((kept < 0) | (kept > 1)).any():
        raise ValueError("points must be in [0, 1] (1 a win, 0.5 a tie, 0 a loss)")
    n_judged, n = len(y), len(y) + len(kept)
    if n == 0:
        return LengthControlled(None, (0.0, 1.0), None, None, 0, 0)  # no evidence: the whole range, as Wilson's
    diffs = np.asarray(length_diffs, dtype=float)
    sd = float(diffs.std()) if n_judged else 0.0
    x = np.tanh(diffs / sd) if sd > 0 else np.zeros(n_judged)  # no length difference to learn from: slope 0
    b0, b1 = _fit(x, y, np.ones((1, n_judged)))
    rate = _rate(b0, np.array([float(n_judged)]), np.array([kept.sum()]), n)[0]
    rng = np.random.default_rng(seed)
    rates = []
    step = max(1, MAX_CELLS // n)
    for start in range(0, resamples, step):
        counts = rng.multinomial(n, np.full(n, 1 / n), size=min(step, resamples - start)).astype(float)
        judged_counts = counts[:, :n_judged]
        c0, _ = _fit(x, y, judged_counts)
        rates.append(_rate(c0, judged_counts.sum(axis=1), counts[:, n_judged:] @ kept, n))
    lo, hi = np.percentile(np.concatenate(rates), [2.5, 97.5])
    return LengthControlled(float(rate), (float(lo), float(hi)), float(b1[0]) if n_judged else None,
                            sd if n_judged else None, n_judged, len(kept))


def _rate(b0: Any, judged: Any, fixed_points: Any, n: int) -> Any:
    """The LC rate over all n pairs: the judged ones at zero length difference, the fixed ones as they are."""
    import numpy as np

    return (judged / (1 + np.exp(-b0)) + fixed_points) / n


def _fit(x: Any, y: Any, w: Any) -> tuple[Any, Any]:
    """(b0, b1) per row of the weights `w` (resamples x pairs): penalised logistic regression of y on x by Newton."""
    import numpy as np

    b0, b1 = np.zeros(len(w)), np.zeros(len(w))
    for _step in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-np.clip(b0[:, None] + b1[:, None] * x, -35, 35)))
        r, v = w * (y - p), w * p * (1 - p)
        g0, g1 = r.sum(axis=1), r @ x - SLOPE_PENALTY * b1
        h00 = v.sum(axis=1) + 1e-12  # a resample with no judged pair: no step
        h01, h11 = v @ x, v @ (x * x) + SLOPE_PENALTY
        det = h00 * h11 - h01 * h01
        d0 = np.clip(b0 + np.clip((h11 * g0 - h01 * g1) / det, -5, 5), -MAX_LOGIT, MAX_LOGIT) - b0
        d1 = np.clip(b1 + np.clip((h00 * g1 - h01 * g0) / det, -5, 5), -MAX_LOGIT, MAX_LOGIT) - b1
        b0, b1 = b0 + d0, b1 + d1
        if max(np.abs(d0).max(), np.abs(d1).max()) < 1e-6:  # logits to 1e-6: rates far below the 4 decimals shown
            break
    return b0, b1
