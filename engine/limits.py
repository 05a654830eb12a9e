"""Pacing shared by all workers: a requests-per-second throttle and a 429 cool-down."""

from __future__ import annotations

import asyncio
import logging
import math
import time

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


class Pacer:
    """Called before every request: waits out a cool-down, then takes a slot from the rps throttle."""

    def __init__(self, rps: float | None) -> None:
        self.cool_down = CoolDown()
        self._throttler: Throttler | None = None
        if rps is not None:
            # Starts are spread evenly (asyncio-throttle with a window of one start, or a few when it would
            # be shorter than the throttler's 10 ms poll): a full-second window would let R requests out
            # in a burst, and a server measuring any one-second window could then see up to 2R.
            burst = max(1, math.ceil(rps / 100))
            self._throttler = Throttler(rate_limit=burst, period=burst / rps)
        # Only one waiter polls the throttler at a time: 256 workers polling every 10 ms would burn a core.
        self._gate = asyncio.Lock()

    async def before_request(self) -> None:
        await self.cool_down.wait()
        if self._throttler is not None:
            async with self._gate:
                await self._throttler.acquire()
            await self.cool_down.wait()
