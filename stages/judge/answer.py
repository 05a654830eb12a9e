"""Reading the judge's answer: a strict check of the JSON object, the ranking a permutation of the shown ids.

Anything unusable raises `MalformedResponse` (the engine retries it a few times, then writes an error
record). An empty answer cut by the token budget is not malformed: `CUT_BY_LENGTH` tells the stage to
retry with a larger budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from engine.chat import choices_of
from engine.errors import MalformedResponse

MAX_REASON_CHARS = 600


@dataclass(frozen=True)
class Verdict:
    ranking: list[str]  # the shown ids, best first
    confidence: int  # 1-5
    reason: str


class _CutByLength:
    def __repr__(self) -> str:
        return "CUT_BY_LENGTH"


CUT_BY_LENGTH: Final = _CutByLength()


def read_answer(data: dict[str, Any], ids: list[str]) -> Verdict | _CutByLength:
    """The verdict in a chat completion, `CUT_BY_LENGTH`, or MalformedResponse saying what was wrong."""
    choice = choices_of(data)[0]
    message = choice["message"]
    finish = choice.get("finish_reason")
    refusal = message.get("refusal")
    if refusal:
        raise MalformedResponse(f"the judge refused: {str(refusal)[:200]}")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise MalformedResponse(f"the answer's content is not text: {type(content).__name__}")
    if finish == "content_filter":
        raise MalformedResponse("the answer was withheld by the provider's content filter")
    if not content.strip():
        if finish == "length":
            return CUT_BY_LENGTH
        raise MalformedResponse(f"empty answer (finish_reason {finish!r})")
    try:
        return parse_verdict(content, ids)
    except MalformedResponse:
        if finish == "length":  # the budget ran out mid-answer
            return CUT_BY_LENGTH
        raise


def parse_verdict(content: str, ids: list[str]) -> Verdict:
    text = _strip_fence(content.strip())
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise MalformedResponse(f"answer is not JSON ({e}): {content[:120]!r}") from e
    if not isinstance(obj, dict):
        raise MalformedResponse(f"answer must be a JSON object, got {type(obj).__name__}")
    ranking = obj.get("ranking")
    if not isinstance(ranking, list) or not all(isinstance(x, str) for x in ranking):
        raise MalformedResponse(f'"ranking" must be a list of ids, got {ranking!r:.120}')
    ranking = [x.strip() for x in ranking]
    if sorted(ranking) != sorted(ids) or len(set(ranking)) != len(ranking):
        missing = sorted(set(ids) - set(ranking))
        repeated = sorted({x for x in ranking if ranking.count(x) > 1})
        extra = sorted(set(ranking) - set(ids))
        found = (("missing", missing), ("repeated", repeated), ("unknown", extra))
        detail = "; ".join(f"{what} {vals}" for what, vals in found if vals)
        raise MalformedResponse(f"ranking {ranking} is not a permutation of the shown ids {ids} ({detail})")
    confidence = obj.get("confidence")
    if isinstance(confidence, float) and confidence.is_integer():
        confidence = int(confidence)
    if not isinstance(confidence, int) or isinstance(confidence, bool) or not 1 <= confidence <= 5:
        raise MalformedResponse(f'"confidence" must be an integer 1-5, got {confidence!r}')
    reason = obj.get("reason")
    if not isinstance(reason, str):
        raise MalformedResponse(f'"reason" must be a string, got {type(reason).__name__}')
    return Verdict(ranking, confidence, reason.strip()[:MAX_REASON_CHARS])


def _strip_fence(text: str) -> str:
    """Tolerate a ```json fence (non-strict OpenAI-compatible judges add one)."""
    if text.startswith("```") and text.endswith("```"):
        body = text[3:-3]
        return body.split("\n", 1)[1] if "\n" in body else body
    return text
