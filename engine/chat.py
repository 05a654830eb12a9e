"""Chat.completions calls through the openai SDK, with the JSON parsed by us (generate and judge alike).

`client.post("/chat/completions", body=..., cast_to=bytes)` is the SDK's documented way to make a
request with a plain body: same transport, auth headers, timeouts and typed errors
(`RateLimitError`, `APIConnectionError`, ...) as `client.chat.completions.create`, without the typed
request transform and response model construction, which cost ~4 ms of CPU per request here
(bench/engine_bench.py) and would cap one event loop at ~250 requests/s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson

from engine.errors import MalformedResponse


async def post_chat(client: openai.AsyncOpenAI, payload: dict[str, Any],
                    on_headers: Callable[[Mapping[str, str]], None] | None = None) -> dict[str, Any]:
    """POST /chat/completions; returns the parsed JSON object, or raises MalformedResponse for a bad body.
    `on_headers` gets the response's headers first (the judge reads the rate-limit ones)."""
    if on_headers is None:
        raw = await client.post("/chat/completions", body=payload, cast_to=bytes)
    else:
        response = await client.post("/chat/completions", body=payload, cast_to=httpx2.Response)
        on_headers(response.headers)
        raw = response.content
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedResponse(f"body is not JSON ({e}): {raw[:120]!r}") from e
    if not isinstance(data, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(data).__name__}")
    return data


def choices_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The response's choices, each with a message object; MalformedResponse when there are none."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("no choices in the response")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise MalformedResponse("a choice has no message object")
    return choices


async def chat_completion(client: openai.AsyncOpenAI, payload: dict[str, Any]) -> dict[str, Any]:
    """`post_chat` that also requires usable choices (so a response without them is retried)."""
    data = await post_chat(client, payload)
    choices_of(data)
    return data


@dataclass(frozen=True)
class Usage:
    tokens_in: int
    tokens_cached: int
    tokens_out: int  # reasoning included
    tokens_reasoning: int


def usage_of(data: dict[str, Any]) -> Usage:
    """Token usage of a chat completion; zeros where the server sent none."""
    usage = data.get("usage") or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        tokens_in=int(usage.get("prompt_tokens") or 0),
        tokens_cached=int(prompt_details.get("cached_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens") or 0),
        tokens_reasoning=int(completion_details.get("reasoning_tokens") or 0),
    )
