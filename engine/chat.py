"""One chat.completions call through the openai SDK, with the JSON parsed by us.

`client.post("/chat/completions", body=..., cast_to=bytes)` is the SDK's documented way to make a
request with a plain body: same transport, auth headers, timeouts and typed errors
(`RateLimitError`, `APIConnectionError`, ...) as `client.chat.completions.create`, without the typed
request transform and response model construction, which cost ~4 ms of CPU per request here
(bench/engine_bench.py) and would cap one event loop at ~250 requests/s.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson

from engine.errors import MalformedResponse


async def chat_completion(client: openai.AsyncOpenAI, payload: dict[str, Any]) -> dict[str, Any]:
    """POST /chat/completions; returns the response object, or raises MalformedResponse for a bad body."""
    raw = await client.post("/chat/completions", body=payload, cast_to=bytes)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedResponse(f"body is not JSON ({e}): {raw[:120]!r}") from e
    if not isinstance(data, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("no choices in the response")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise MalformedResponse("a choice has no message object")
    return data


def usage_of(data: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens incl. reasoning, cached prompt tokens); zeros when absent."""
    usage = data.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )
