"""engine/idset.py: the engine's per-row memory for repeated prompts, checked against a plain dict."""

from __future__ import annotations

import random

from engine.idset import _ZERO, IdLines


def test_first_lines_match_a_dict_through_growth_and_the_edge_ids():
    rng = random.Random(7)
    ids = [rng.getrandbits(64) for _ in range(20_000)] + [0, _ZERO, 2**64 - 1, 5]
    ids += rng.sample(ids, 3_000)  # repeats
    table, plain = IdLines(capacity=4), {}
    for line, key in enumerate(ids, start=1):
        assert table.first(key, line) == plain.get(key)
        plain.setdefault(key, line)
    assert len(table) == len(plain)


def test_at_most_forty_eight_bytes_a_row():
    table = IdLines()
    for key in range(1, 100_001):
        table.first(key * 0x9E3779B97F4A7C15 % 2**64, key)
    slots = len(table._ids)
    assert table._ids.itemsize * slots + table._lines.itemsize * slots <= 24 * 2 * 100_000  # at most half full
