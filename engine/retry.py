"""One retry policy for every request: which failures are retried, and how long to wait.

The openai SDK's own retries are switched off (max_retries=0) wherever the engine makes a client, so
this is the only place that retries; that keeps the attempt counts, the shared 429 cool-down and the
error records honest.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import openai

from engine.client import refused
from engine.errors import FatalError, MalformedResponse

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429})
# Answers no other row will escape (a rejected key, a forbidden or unknown model): the run stops at once.
RUN_FATAL_STATUS = frozenset({401, 403, 404})
QUOTA_CODE = "insufficient_quota"  # OpenAI's 429 for an exhausted quota or billing limit: retrying is pointless


@dataclass(frozen=True)
class Decision:
    retryable: bool
    reason: str
    status: int | None = None
    retry_after_s: float | None = None
    malformed: bool = False
    run_fatal: bool = False  # no further request of this run can succeed: stop sending


def classify(exc: BaseException) -> Decision:
    """Map an exception from one request to retry-or-not, with a reason fit for an error record."""
    if isinstance(exc, FatalError):
        return Decision(False, exc.reason, exc.status, run_fatal=exc.run_fatal)
    if isinstance(exc, MalformedResponse):
        return Decision(True, f"malformed response: {exc}", malformed=True)
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)) and refused(exc):
        return Decision(True, "connection refused: nothing is listening at the URL")  # not a timeout
    if isinstance(exc, openai.APITimeoutError):
        return Decision(True, "request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return Decision(True, f"connection error: {exc.__cause__ or exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _error_message(exc)
        if status == 429 and _is_quota(exc, message):
            return Decision(False, f"HTTP 429 (quota exhausted): {message}", status, run_fatal=True)
        if status in RUN_FATAL_STATUS:
            return Decision(False, f"HTTP {status}: {message}", status, run_fatal=True)
        if status in RETRYABLE_STATUS or status >= 500:
            return Decision(True, f"HTTP {status}: {message}", status, retry_after(exc.response.headers))
        return Decision(False, f"HTTP {status}: {message}", status)
    if isinstance(exc, openai.APIResponseValidationError):
        return Decision(True, f"malformed response: {exc}", malformed=True)
    if isinstance(exc, json.JSONDecodeError):  # the SDK raises this for a body that is not JSON
        return Decision(True, f"malformed response: body is not JSON ({exc})", malformed=True)
    if isinstance(exc, (asyncio.TimeoutError, ConnectionError)):
        return Decision(True, f"{type(exc).__name__}: {exc}")
    return Decision(False, f"{type(exc).__name__}: {exc}")


def _is_quota(exc: openai.APIStatusError, message: str) -> bool:
    """OpenAI marks it with code/type "insufficient_quota"; other servers at least say "quota" and give no
    Retry-After (a rate limit's message says "rate limit" and its Retry-After says when to come back)."""
    inner = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
    if isinstance(inner, dict) and QUOTA_CODE in (inner.get("code"), inner.get("type")):
        return True
    return "quota" in message.lower() and retry_after(exc.response.headers) is None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc.message)[:300]


def retry_after(headers) -> float | None:  # noqa: ANN001 - any mapping of headers
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date), as OpenAI sends them."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Backoff:
    base_s: float
    cap_s: float
    max_retry_after_s: float

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with 'equal jitter' (half fixed, half random); Retry-After wins when given."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_retry_after_s)
        ceiling = min(self.cap_s, self.base_s * (2 ** (attempt - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    max_attempts: int,
    backoff: Backoff,
    interrupt: asyncio.Event,
    give_up: Callable[[Decision, int], BaseException],
    max_malformed: int | None = None,
    before_attempt: Callable[[int], Awaitable[None]] | None = None,
    on_failure: Callable[[Decision, bool], None] | None = None,
) -> T:
    """`call()` under the retry policy, the one loop the live requests (engine/runner.py) and the Batch API's file and
    batch calls (stages/judge/batch_run.py) share.

    Each failure is classified (`classify`); the loop gives up with `give_up(decision, attempt)` when the failure is
    not retryable, after `max_attempts` tries or `max_malformed` malformed answers. Otherwise it waits the backoff
    (Retry-After wins), ending early when `interrupt` is set. `before_attempt(attempt)` runs before each try (pacing;
    it may raise to stop: the interrupt's meaning is the caller's), `on_failure(decision, giving_up)` after each
    failure (counters, a shared cool-down)."""
    attempt = malformed = 0
    while True:
        attempt += 1
        if before_attempt is not None:
            await before_attempt(attempt)
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            decision = classify(e)
            malformed += decision.malformed
            giving_up = (not decision.retryable or attempt >= max_attempts
                         or (max_malformed is not None and malformed >= max_malformed))
            if on_failure is not None:
                on_failure(decision, giving_up)
            if giving_up:
                raise give_up(decision, attempt) from e
            try:  # the wait ends early when the caller is interrupted meanwhile
                await asyncio.wait_for(interrupt.wait(), backoff.delay(attempt, decision.retry_after_s))
            except TimeoutError:
                pass
