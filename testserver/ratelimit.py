"""OpenAI's per-model rate limits: requests and tokens per minute, enforced at admission.

Each limited model has a request bucket and a token bucket (token buckets, continuous refill: limit / 60 per
second up to one minute's limit; full at start). A request is admitted only if both hold enough: one request, and
its prompt tokens plus n * its max_completion_tokens (or max_tokens), which is what OpenAI counts before it has run
the request (openai-cookbook's api_request_parallel_processor.py counts the same). A request that does not fit gets
429 `rate_limit_exceeded` with `retry-after-ms` / `retry-after`; every answer carries OpenAI's `x-ratelimit-*`
headers (reset: the time until the bucket is full again, written like "1s", "6m0s", "20ms").
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


def duration(seconds: float) -> str:
    """Seconds written as OpenAI's reset headers write them (Go's duration format): "20ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


class TokenBucket:
    """`per_minute` capacity, refilled continuously at per_minute / 60 a second; starts full."""

    def __init__(self, per_minute: int, now: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self._t = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (0: now; inf: never, it is more than the capacity). Call refill first."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass
class Admission:
    ok: bool
    headers: dict[str, str]
    kind: str | None = None  # "requests", "tokens" or "too_large" when refused
    message: str = ""


@dataclass
class _Model:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    admitted: Counter[str] = field(default_factory=Counter)  # requests, tokens


class RateLimiter:
    """The buckets of every limited model; `admit(model, tokens)` decides and says what headers to send."""

    def __init__(self, rpm: int | None, tpm: int | None, models: list[str] | None,
                 clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm = rpm, tpm
        self.models = None if models is None else frozenset(models)
        self._clock = clock
        self._buckets: dict[str, _Model] = {}
        self.refused: Counter[str] = Counter()  # requests, tokens, too_large

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def applies(self, model: str) -> bool:
        return self.enabled and (self.models is None or model in self.models)

    def admit(self, model: str, tokens: int) -> Admission:
        """Take one request and `tokens` from `model`'s buckets if both fit; otherwise take nothing."""
        now = self._clock()
        m = self._buckets.get(model)
        if m is None:
            m = self._buckets[model] = _Model(
                None if self.rpm is None else TokenBucket(self.rpm, now),
                None if self.tpm is None else TokenBucket(self.tpm, now),
            )
        for bucket in (m.requests, m.tokens):
            if bucket is not None:
                bucket.refill(now)
        wait_requests = m.requests.wait_for(1) if m.requests is not None else 0.0
        wait_tokens = m.tokens.wait_for(tokens) if m.tokens is not None else 0.0
        if wait_requests == 0 and wait_tokens == 0:
            for bucket, amount in ((m.requests, 1), (m.tokens, tokens)):
                if bucket is not None:
                    bucket.level -= amount
            m.admitted["requests"] += 1
            m.admitted["tokens"] += tokens
            return Admission(True, self._headers(m))
        headers = self._headers(m)
        if math.isinf(wait_tokens):
            self.refused["too_large"] += 1
            message = (f"Request too large for {model} in organization org-testserver on tokens per min (TPM): "
                       f"Limit {self.tpm}, Requested {tokens}. The input or output tokens must be reduced in order "
                       f"to run successfully. {_DOCS}")
            return Admission(False, headers, "too_large", message)
        kind = "tokens" if wait_tokens >= wait_requests else "requests"
        self.refused[kind] += 1
        wait = max(wait_requests, wait_tokens)
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        headers["retry-after"] = str(math.ceil(wait))
        if kind == "tokens":
            assert m.tokens is not None
            used = round(m.tokens.capacity - m.tokens.level)
            where = f"tokens per min (TPM): Limit {self.tpm}, Used {used}, Requested {tokens}"
        else:
            assert m.requests is not None
            used = round(m.requests.capacity - m.requests.level)
            where = f"requests per min (RPM): Limit {self.rpm}, Used {used}, Requested 1"
        message = (f"Rate limit reached for {model} in organization org-testserver on {where}. "
                   f"Please try again in {duration(wait)}. {_DOCS}")
        return Admission(False, headers, kind, message)

    @staticmethod
    def _headers(m: _Model) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, bucket in (("requests", m.requests), ("tokens", m.tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = duration(bucket.reset_s())
        return headers

    def snapshot(self) -> dict[str, Any]:
        """What GET /_stats reports under "rate_limits": the limits, what each model was admitted, the 429s."""
        return {
            "rpm_limit": self.rpm,
            "tpm_limit": self.tpm,
            "admitted": {model: dict(m.admitted) for model, m in self._buckets.items()},
            "refused": dict(self.refused),
        }
