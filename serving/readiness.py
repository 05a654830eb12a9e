"""Is an OpenAI-compatible endpoint serving every adapter we expect, and does each one answer?

One plain check over HTTP, shared by the Modal deploy and the local deploy:
1. poll `GET /v1/models` (bounded, with exponential backoff) until every expected model is listed (and,
   when `roots` is given, listed with `root` = the folder asked for: after a rolling `modal deploy` an old
   warm container may answer first with the previous folders, so one look is not proof);
2. send one short chat request to each and check it comes back with text.
Every failure is a DeployError naming the part: "startup" (no answer at all), "adapter missing"
(the server answers but never lists the model) or "request" (a listed model fails to answer).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from serving.errors import DeployError

logger = logging.getLogger(__name__)

PROBE_MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
T = TypeVar("T")


@dataclass(frozen=True)
class ReadinessOptions:
    """How long and how often to wait for an endpoint."""

    timeout_s: float = field(default=600.0, metadata={"help": "bound on the whole check, seconds"})
    request_timeout_s: float = field(default=60.0, metadata={"help": "bound on one HTTP request"})
    first_delay_s: float = field(default=0.5, metadata={"help": "first wait between polls"})
    max_delay_s: float = field(default=10.0, metadata={"help": "longest wait between polls (doubling)"})
    probe_max_tokens: int = field(default=16, metadata={"help": "max_tokens of the probe chat request"})
    api_key: str = field(default="not-needed", repr=False, metadata={"help": "bearer key, if the server wants one"})

    def __post_init__(self) -> None:
        for name in ("timeout_s", "request_timeout_s", "first_delay_s", "max_delay_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds; got {getattr(self, name)}")
        if self.max_delay_s < self.first_delay_s:
            raise ValueError(
                f"max_delay_s must be >= first_delay_s; got {self.max_delay_s} < {self.first_delay_s}"
            )
        if self.probe_max_tokens < 1:
            raise ValueError(f"probe_max_tokens must be >= 1; got {self.probe_max_tokens}")


@dataclass(frozen=True)
class Readiness:
    """What the check saw: the models listed (id -> parent, id -> root) and each expected model's answer.

    vLLM lists an adapter's `root` as the folder it loaded the adapter from."""

    models: dict[str, str | None]
    answers: dict[str, str]
    ready_seconds: float
    roots: dict[str, str | None] = field(default_factory=dict)


async def wait_until_ready(
    base_url: str, expected: Sequence[str], options: ReadinessOptions | None = None,
    roots: Mapping[str, str] | None = None,
) -> Readiness:
    """Wait until `base_url` (ending in /v1) lists every model in `expected`, then probe each one.

    With `roots` (model -> folder), a listing whose `root` for one of them is another folder is not ready yet:
    it is polled again until the deadline (an old version still answering), then "adapter missing"."""
    from openai import AsyncOpenAI

    opts = options or ReadinessOptions()
    if not expected:
        raise ValueError("expected must name at least one model to check; got none")
    start = time.monotonic()
    deadline = start + opts.timeout_s
    # Retries are ours (bounded by the deadline), so the SDK's own are off.
    async with AsyncOpenAI(base_url=base_url, api_key=opts.api_key, max_retries=0) as client:
        cards = await _wait_for_models(client, base_url, expected, deadline, opts, dict(roots or {}))
        answers = {}
        for name in expected:
            answers[name] = await _probe(client, name, deadline, opts)
    elapsed = time.monotonic() - start
    logger.info("%s is ready after %.1f s: %s", base_url, elapsed, ", ".join(expected))
    return Readiness(models={i: getattr(c, "parent", None) for i, c in cards.items()}, answers=answers,
                     ready_seconds=round(elapsed, 3), roots={i: getattr(c, "root", None) for i, c in cards.items()})


def check_ready(base_url: str, expected: Sequence[str], options: ReadinessOptions | None = None,
                roots: Mapping[str, str] | None = None) -> Readiness:
    """wait_until_ready from synchronous code (also from a thread whose loop is already running)."""
    return run_sync(wait_until_ready(base_url, expected, options, roots))


def run_sync(coro: Awaitable[T]) -> T:
    """Run `coro` to completion: asyncio.run here, or on a helper thread if a loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as e:  # handed back to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, name="readiness")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _wait_for_models(client, base_url: str, expected: Sequence[str], deadline: float,
                           opts: ReadinessOptions, roots: dict[str, str]) -> dict[str, Any]:
    import openai

    delay = opts.first_delay_s
    listed: dict[str, Any] | None = None  # model id -> its card
    last_error = "no request finished"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            page = await client.models.list(timeout=min(opts.request_timeout_s, remaining))
        except openai.AuthenticationError as e:
            raise DeployError("startup", f"{base_url} rejected the API key (HTTP {e.status_code})") from e
        except (openai.APIConnectionError, openai.APIStatusError) as e:
            last_error = f"{type(e).__name__}: {_short(e)}"
            logger.debug("models list at %s not ready: %s", base_url, last_error)
        else:
            listed = {m.id: m for m in page.data}
            missing = [name for name in expected if name not in listed]
            stale = _stale_roots(listed, roots)
            if not missing and not stale:
                return listed
            if missing:
                last_error = f"listed {sorted(listed)}, missing {missing}"
                logger.info("waiting for %s to list %s", base_url, missing)
            else:
                last_error = f"it still serves {stale} (the previous version), not {roots}"
                logger.info("waiting for %s: an old version still answers (%s)", base_url, stale)
        await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 2, opts.max_delay_s)
    if listed is None:
        raise DeployError(
            "startup", f"{base_url}/models did not answer within {opts.timeout_s:g} s (last: {last_error})"
        )
    missing = [name for name in expected if name not in listed]
    if not missing:
        raise DeployError("adapter missing", f"{base_url}: after {opts.timeout_s:g} s {last_error}")
    raise DeployError(
        "adapter missing",
        f"{base_url} never listed {missing} within {opts.timeout_s:g} s; it lists {sorted(listed)}. "
        "Check the adapter folder exists and loads (the server logs say why it left one out).",
    )


async def _probe(client, name: str, deadline: float, opts: ReadinessOptions) -> str:
    import openai

    # Always allow a few seconds: the models answered, so a chat request should too.
    timeout = max(5.0, min(opts.request_timeout_s, deadline - time.monotonic()))
    try:
        response = await client.chat.completions.create(
            model=name,
            messages=PROBE_MESSAGES,
            max_tokens=opts.probe_max_tokens,
            temperature=0.0,
            timeout=timeout,
        )
    except (openai.APIConnectionError, openai.APIStatusError) as e:
        raise DeployError("request", f"chat request to {name!r} failed: {type(e).__name__}: {_short(e)}") from e
    if not response.choices or response.choices[0].message.content is None:
        raise DeployError("request", f"chat request to {name!r} came back without text: {response!r:.300}")
    text = response.choices[0].message.content
    logger.info("%s answers: %r", name, text[:80])
    return text


def _stale_roots(listed: dict[str, Any], roots: dict[str, str]) -> dict[str, str | None]:
    """The listed models whose `root` is not the folder asked for (model -> the root listed)."""
    return {name: getattr(listed[name], "root", None) for name, root in roots.items()
            if name in listed and getattr(listed[name], "root", None) != root}


def _short(error: Exception, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."
