"""Pacing shared by all workers: per-minute request and token budgets, a requests-per-second throttle and a 429
cool-down.

The per-minute budgets count what OpenAI counts when it admits a request: one request, and its prompt tokens plus
its `max_completion_tokens` (the answer's budget, not what it will use). Each is a bucket refilled continuously
(a minute's limit per minute, holding at most one minute's worth), as OpenAI's limiter is. When responses carry
`x-ratelimit-*` headers, the server's figures win wherever they are lower: other clients of the same key, or a
limit below the configured one, then slow this run down from the first answers on (requests already in flight may
still meet a 429, which the cool-down absorbs).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping

from asyncio_throttle import Throttler

log = logging.getLogger(__name__)


class CoolDown:
    """When any worker gets a 429 with Retry-After, every worker waits until that moment has passed.

    The other requests in flight usually get their 429 too, moments later: each may push the end further,
    but the cool-down is logged (and counted in `pauses`) once, when it begins.
    """

    def __init__(self) -> None:
        self._until = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        now = time.monotonic()
        until = now + seconds
        if until <= self._until:
            return
        if self._until <= now:
            self.pauses += 1
            log.info("rate limited (HTTP 429): all workers pause for %.1fs", seconds)
        self._until = until

    async def wait(self) -> None:
        while (remaining := self._until - time.monotonic()) > 0:
            await asyncio.sleep(remaining)


class Budget:
    """A per-minute budget as a bucket refilled continuously: `per_minute` per minute, holding at most that much."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._level = per_minute
        self._at = time.monotonic()

    def _refill(self) -> float:
        now = time.monotonic()
        self._level = min(self.per_minute, self._level + (now - self._at) * self.per_minute / 60.0)
        self._at = now
        return self._level

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` fits (a request over a whole minute's budget waits for a full bucket)."""
        short = min(amount, self.per_minute) - self._refill()
        return 0.0 if short <= 0 else short * 60.0 / self.per_minute

    def take(self, amount: float) -> None:
        self._refill()
        self._level -= amount  # may go below zero for an oversized request: later ones wait it back

    def observe(self, limit: float | None, remaining: float | None) -> None:
        """The server's figures: a lower limit becomes ours; a lower remaining count replaces our level."""
        if limit is not None and 0 < limit < self.per_minute:
            log.info("the server's per-minute limit is %s, below the configured %s: pacing to it",
                     f"{limit:,.0f}", f"{self.per_minute:,.0f}")
            self.per_minute = limit
        if remaining is not None and remaining < self._refill():
            self._level = remaining

    @property
    def level(self) -> float:
        return self._refill()


_HEADER = "x-ratelimit-{}-{}"


def _number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class Pacer:
    """Called before every request: waits out a cool-down, then for room in the per-minute budgets, then takes a
    slot from the rps throttle."""

    def __init__(self, rps: float | None, *, rpm: float | None = None, tpm: float | None = None) -> None:
        self.cool_down = CoolDown()
        self.requests = Budget(rpm) if rpm is not None else None
        self.tokens = Budget(tpm) if tpm is not None else None
        self.waited_s = 0.0  # time requests spent waiting for the per-minute budgets, all workers summed
        self._throttler: Throttler | None = None
        if rps is not None:
            # Starts are spread evenly (asyncio-throttle with a window of one start, or a few when it would
            # be shorter than the throttler's 10 ms poll): a full-second window would let R requests out
            # in a burst, and a server measuring any one-second window could then see up to 2R.
            burst = max(1, math.ceil(rps / 100))
            self._throttler = Throttler(rate_limit=burst, period=burst / rps)
        # Only one waiter polls the throttler at a time: 256 workers polling every 10 ms would burn a core.
        self._gate = asyncio.Lock()

    async def before_request(self, tokens: int = 0) -> None:
        """Wait until this request may start; `tokens` is what the server counts at admission (prompt tokens plus
        the completion budget; 0 when the stage does not count them, as generate does not)."""
        await self.cool_down.wait()
        if self.requests is not None or self.tokens is not None:
            async with self._gate:  # first come, first served: a large request is not passed over forever
                await self._budgets(tokens)
        if self._throttler is not None:
            async with self._gate:
                await self._throttler.acquire()
            await self.cool_down.wait()

    async def _budgets(self, tokens: int) -> None:
        while True:
            wait = max(self.requests.wait_s(1) if self.requests is not None else 0.0,
                       self.tokens.wait_s(tokens) if self.tokens is not None and tokens else 0.0)
            if wait <= 0:
                break
            self.waited_s += wait
            await asyncio.sleep(wait)
            await self.cool_down.wait()
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None and tokens:
            self.tokens.take(tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        """A response's `x-ratelimit-*` headers (any case): the server's limits and what remains of them."""
        lower = {k.lower(): v for k, v in headers.items()}
        for budget, unit in ((self.requests, "requests"), (self.tokens, "tokens")):
            if budget is not None:
                budget.observe(_number(lower, _HEADER.format("limit", unit)),
                               _number(lower, _HEADER.format("remaining", unit)))

