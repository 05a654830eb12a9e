"""Progress for a running stage: a live one-line bar on a TTY, periodic log lines otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

from engine.summary import Counters

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def status_line(stage: str, c: Counters, elapsed: float, in_flight: int) -> str:
    done = c.finished
    rate = done / elapsed if elapsed > 0 else 0.0
    left = max(0, c.total - done)
    eta = _duration(left / rate) if rate > 0 else "?"
    pct = f"{100 * done / c.total:3.0f}%" if c.total else "  -"
    parts = [
        f"{stage} {done}/{c.total} {pct}",
        f"{rate:.2f} rows/s",
        f"ETA {eta}",
        f"in flight {in_flight}",
        f"failed {c.failed}",
        f"retries {c.retries}",
        f"tokens {_tokens(c.tokens_in + c.tokens_out)}",
    ]
    if c.cost_usd:
        parts.append(f"${c.cost_usd:.2f}")
    return " | ".join(parts)


class Progress:
    def __init__(self, stage: str, counters: Counters, every_s: float, stream: TextIO | None = None):
        self.stage = stage
        self.counters = counters
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.5 if self.tty else every_s
        self.start = time.monotonic()
        self.in_flight = 0

    def line(self) -> str:
        return status_line(self.stage, self.counters, time.monotonic() - self.start, self.in_flight)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.show()

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
        else:
            log.info(self.line())

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + "\n")
            self.stream.flush()
