"""Pacing shared by all workers: a requests-per-second throttle and a 429 cool-down."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from asyncio_throttle import Throttler

log = logging.getLogger(__name__)


class CoolDown:
    """When any worker gets a 429 with Retry-After, every worker waits until that moment has passed."""

    def __init__(self) -> None:
        self._until = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self._until:
            self._until = until
            self.pauses += 1
            log.info("rate limited: all workers pause for %.1fs", seconds)

    async def wait(self) -> None:
        while (remaining := self._until - time.monotonic()) > 0:
            await asyncio.sleep(remaining)


class Pacer:
    """Called before every request: waits out a cool-down, then takes a slot from the rps throttle."""

    def __init__(self, rps: float | None) -> None:
        self.cool_down = CoolDown()
        self._throttler: Throttler | None = None
        if rps is not None:
            # asyncio-throttle counts starts in a sliding window; a window of at least 1 s keeps the
            # count an integer (0.5 rps -> 1 per 2 s; 2.5 rps -> 2 per 1 s).
            window = max(1.0, 1.0 / rps)
            self._throttler = Throttler(rate_limit=max(1, math.floor(rps * window)), period=window)
        # Only one waiter polls the throttler at a time: 256 workers polling every 10 ms would burn a core.
        self._gate = asyncio.Lock()

    async def before_request(self) -> None:
        await self.cool_down.wait()
        if self._throttler is not None:
            async with self._gate:
                await self._throttler.acquire()
            await self.cool_down.wait()
