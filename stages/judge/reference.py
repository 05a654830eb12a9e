"""The offline reference judge's tie-break: similarity to the row's reference completion.

The offline judge ranks by a format rubric (stages/judge/rubric.py) and breaks equal totals with this
similarity. Deterministic and free, for CI and the local profile: every row it writes says
`"backend": "reference"`.

Similarity: cosine of lower-cased word unigram + bigram counts (speaker tags included), in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections import Counter

# The judge is the rubric (stages/judge/rubric.py), this its tie-break. v2: a script line's text is dialogue (no
# `[...]` tag spam, one speaker per line), after v1's rewarded DPO for lines like "[KRAMER] [ELAINE] [[ELAINE]".
REFERENCE_MODEL = "reference-rubric-v2"
_WORD = re.compile(r"[a-z0-9']+")


def features(text: str) -> Counter[str]:
    words = _WORD.findall(text.lower())
    grams = Counter(words)
    grams.update(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))
    return grams


def similarity(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    dot = sum(v * large.get(k, 0) for k, v in small.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm


def confidence_from_gap(gap: float) -> int:
    """1-5 from the similarity gap between the best and the worst: each 0.1 of gap is one step."""
    return max(1, min(5, 1 + int(gap * 10)))


def rank_by_reference(reference: str, shown: list[str]) -> tuple[list[int], list[float]]:
    """(shown positions best first, score per shown position); ties keep the shown order."""
    ref = features(reference)
    scores = [similarity(ref, features(text)) for text in shown]
    order = sorted(range(len(shown)), key=lambda p: (-scores[p], p))
    return order, scores
