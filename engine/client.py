"""The AsyncOpenAI client every stage uses: SDK retries off (the engine retries), pool sized to concurrency."""

from __future__ import annotations

import httpx2
import openai


def make_client(base_url: str | None, api_key: str | None, *, timeout_s: float, concurrency: int) -> openai.AsyncOpenAI:
    """An AsyncOpenAI on the aiohttp transport (less CPU per request than the default, see NOTES).

    max_retries=0: the engine's single retry policy handles every retryable failure, so attempts,
    the shared 429 cool-down and error records are counted in one place.
    """
    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s)
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "EMPTY",
        timeout=timeout_s,
        max_retries=0,
        http_client=http_client,
    )
