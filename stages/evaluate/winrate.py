"""Win rates with 95% intervals: one definition for the judged A/B evaluation and the human arena.

Wilson score interval (Wilson 1927), closed form: it stays inside [0, 1] and behaves at 0 or n wins, unlike
the normal approximation. A tie counts half a win in the rate over all pairs (the usual convention for
LLM-judge win rates), so that rate's interval is taken over n all pairs with wins + ties / 2 successes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for `successes` out of `n` (successes may be fractional: half-wins)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 0; got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0  # no evidence: the whole range
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges (no rounding residue)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class WinRate:
    """wins / losses / ties of the challenger (e.g. "seinfeld-dpo") against the baseline ("seinfeld")."""

    wins: int
    losses: int
    ties: int

    def __post_init__(self) -> None:
        if min(self.wins, self.losses, self.ties) < 0:
            raise ValueError(f"counts must be >= 0; got {self}")

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def rate_decided(self) -> float | None:
        """Wins over decided pairs (ties left out); None when nothing was decided."""
        return self.wins / self.decided if self.decided else None

    @property
    def interval_decided(self) -> tuple[float, float]:
        return wilson_interval(self.wins, self.decided)

    @property
    def rate_all(self) -> float | None:
        """(wins + ties / 2) over all pairs; None when there are none."""
        return (self.wins + self.ties / 2) / self.total if self.total else None

    @property
    def interval_all(self) -> tuple[float, float]:
        return wilson_interval(self.wins + self.ties / 2, self.total)

    def to_dict(self) -> dict:
        """Counts, both rates and both intervals (rounded), for JSON reports and metadata."""
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {**asdict(self), "decided": self.decided, "total": self.total,
                "win_rate_decided": r(self.rate_decided), "ci95_decided": [r(x) for x in self.interval_decided],
                "win_rate_all": r(self.rate_all), "ci95_all": [r(x) for x in self.interval_all],
                "interval": "wilson"}
