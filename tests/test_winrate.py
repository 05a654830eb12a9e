"""Wilson intervals and win-rate summaries (shared by the A/B evaluation and the arena)."""

from __future__ import annotations

import pytest

from stages.evaluate.winrate import WinRate, wilson_interval


def test_wilson_matches_published_values():
    # Newcombe (1998), Table I, method 3 (Wilson score without continuity correction).
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = wilson_interval(15, 148)
    assert (round(lo, 4), round(hi, 4)) == (0.0624, 0.1605)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and round(hi, 4) == 0.1611


def test_edges_and_bad_input():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and 0.69 < lo < 0.73
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_win_rate_over_decided_and_all_pairs():
    w = WinRate(wins=30, losses=10, ties=10)
    assert w.rate_decided == 0.75 and w.rate_all == 0.7
    lo, hi = w.interval_decided
    assert lo < 0.75 < hi and lo > 0.5  # clearly better than chance at n=40
    d = w.to_dict()
    assert d["decided"] == 40 and d["total"] == 50 and d["interval"] == "wilson"
    assert WinRate(0, 0, 3).rate_decided is None and WinRate(0, 0, 3).rate_all == 0.5
