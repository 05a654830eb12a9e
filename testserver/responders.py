"""What the server answers when nothing goes wrong: Seinfeld-like samples, and a judge's ranking.

Both are deterministic functions of the request, cheap enough for thousands of requests a second.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PREFER_MARKER = "PREFER-ME"
AVOID_MARKER = "AVOID-ME"

# Reasoning tokens the judge reports per `reasoning_effort` (GPT-5 defaults to medium).
REASONING_TOKENS = {"minimal": 0, "low": 64, "medium": 256, "high": 1024}

_CHARACTERS = ("JERRY", "GEORGE", "ELAINE", "KRAMER")
_OPENERS = (
    "What is the deal with",
    "I can't believe",
    "You know what I hate about",
    "Serenity now, I'm talking about",
    "Hello, Newman, and",
    "That's a shame, because",
    "Not that there's anything wrong with",
    "Yada yada yada,",
    "These pretzels are making me think about",
    "Giddy up, I just saw",
)
_OBJECTS = (
    "the soup guy",
    "airline peanuts",
    "a marble rye",
    "the close talker",
    "my parking space",
    "the puffy shirt",
    "double dipping",
    "the low talker",
    "a big salad",
    "the contest",
    "Festivus",
    "the muffin tops",
    "a junior mint",
    "the bubble boy",
    "the pen from Florida",
    "my Pez dispenser",
)
_TAILS = (
    "and nobody says anything!",
    "and I'm supposed to just sit there?",
    "it's a whole thing.",
    "I don't even know who I am anymore.",
    "and you want to be my latex salesman?",
    "what kind of person does that?",
    "that's not a date, that's a hostage situation.",
    "the sea was angry that day, my friends.",
    "and it's not even Tuesday.",
    "which is exactly what Newman wants.",
)


def estimate_tokens(chars: int) -> int:
    """Tokens as characters // 4, at least 1 for non-empty text (close enough for English)."""
    return max(1, chars // 4) if chars else 0


def text_of(content: Any) -> str:
    """A message's text: a string, or the text of its content parts ([{"type": "text", "text": ...}])."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(messages: Any) -> int:
    """The prompt tokens a chat request's usage reports: its messages' text, counted by `estimate_tokens`."""
    if not isinstance(messages, list):
        return 0
    return estimate_tokens(sum(len(text_of(m.get("content"))) for m in messages if isinstance(m, dict)))


def _stable_int(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def sample_text(
    prompt: str, seed: int | None, index: int, temperature: float | None, lines: tuple[int, int] = (2, 4)
) -> str:
    """`lines` (min, max <= 10) script lines `[NAME] ...`, a pure function of the other arguments.

    Every pick comes from one 64-byte hash (no `random.Random` per choice): the hot path of the server.
    """
    d = hashlib.blake2b(f"{prompt}\x1f{seed}\x1f{index}\x1f{temperature}".encode()).digest()
    out = []
    for k in range(lines[0] + d[0] % (lines[1] - lines[0] + 1)):
        b = d[1 + 6 * k : 7 + 6 * k]
        extra = "".join(f" and {_OBJECTS[b[4 + j] % len(_OBJECTS)]}" for j in range(b[3] % 3))
        out.append(
            f"[{_CHARACTERS[b[0] % len(_CHARACTERS)]}] {_OPENERS[b[1] % len(_OPENERS)]} "
            f"{_OBJECTS[b[2] % len(_OBJECTS)]}{extra}, {_TAILS[(b[4] + 7 * b[5]) % len(_TAILS)]}"
        )
    return "\n".join(out)


def marker_slots(prompt: str, seed: int | None, n: int) -> tuple[int | None, int | None]:
    """(index that gets PREFER-ME, index that gets AVOID-ME) among n choices; deterministic."""
    if n < 2:
        return None, None
    h = _stable_int("markers", prompt, seed, n)
    prefer = h % n
    avoid = (prefer + 1 + (h // n) % (n - 1)) % n
    return prefer, avoid


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut `text` at a word boundary to about `max_tokens` tokens; (text, was_truncated)."""
    if max_tokens is None or len(text) // 4 <= max_tokens:
        return text, False
    cut = text[: max_tokens * 4]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else cut), True


@dataclass(frozen=True)
class Verdict:
    """The judge's decision over the completion blocks found in a prompt."""

    ranking: list[str]
    confidence: int
    reason: str


def find_blocks(pattern: re.Pattern[str], text: str) -> list[tuple[str, str]]:
    """(id, body) for each completion block, first occurrence of an id wins, in prompt order."""
    seen: dict[str, str] = {}
    for m in pattern.finditer(text):
        seen.setdefault(m.group("id"), m.group("body"))
    return list(seen.items())


def judge(blocks: Sequence[tuple[str, str]], *, position_bias: bool = False) -> Verdict:
    """Rank: PREFER-ME first, AVOID-ME last, the rest by stripped length descending, ties by id.

    `position_bias`: rank in the order shown instead (the failure a swap check exists to catch)."""
    if position_bias:
        ranking = [cid for cid, _ in blocks]
        return Verdict(ranking, 4, f"Completion {ranking[0]} comes first, so it is best.")

    def key(block: tuple[str, str]) -> tuple[int, int, str]:
        cid, body = block
        group = 0 if PREFER_MARKER in body else 2 if AVOID_MARKER in body else 1
        return group, -len(body.strip()), cid

    ordered = sorted(blocks, key=key)
    ranking = [cid for cid, _ in ordered]
    marked = any(PREFER_MARKER in b or AVOID_MARKER in b for _, b in blocks)
    confidence = 5 if marked else 3 if len(ordered) > 1 and key(ordered[0])[1] != key(ordered[1])[1] else 2
    reason = (
        f"Completion {ranking[0]} has the sharpest voice and timing; {ranking[-1]} drags."
        if len(ranking) > 1
        else f"Only completion {ranking[0]} was given."
    )
    return Verdict(ranking, confidence, reason)
