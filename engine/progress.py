"""Progress for a running stage: a live bar on a terminal (rich), periodic log lines otherwise.

On a terminal the bar stays on the last line and every log line is printed above it, whole: while the bar
is shown, the logging handlers that write to the same stderr write through rich's proxy for it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

from engine.summary import Counters

log = logging.getLogger(__name__)

TTY_REFRESH_S = 0.5  # how often the bar is redrawn


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
        self.every_s = TTY_REFRESH_S if self.tty else every_s
        self.start = time.monotonic()
        self.in_flight = 0
        self._bar: _Bar | None = None

    def line(self) -> str:
        return status_line(self.stage, self.counters, time.monotonic() - self.start, self.in_flight)

    async def run(self) -> None:
        if self.tty and self._bar is None:
            self._bar = _Bar(self.stream)
        while True:
            await asyncio.sleep(self.every_s)
            self.show()

    def show(self) -> None:
        if self._bar is not None:
            self._bar.update(self.counters, self.line())
        elif not self.tty:
            log.info(self.line())

    def finish(self) -> None:
        """The final state stays on screen (a terminal) and the log handlers write to stderr directly again."""
        if self._bar is not None:
            self._bar.update(self.counters, self.line())
            self._bar.stop()
            self._bar = None


class _Bar:
    """rich's progress bar with the status line beside it; log lines to the same stream print above it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.file_proxy import FileProxy
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        # soft_wrap: a long log line is left whole for the terminal to wrap; markup off: "[JERRY]" is text
        console = Console(file=stream, soft_wrap=True, markup=False, highlight=False, emoji=False)
        self.progress = RichProgress(
            BarColumn(bar_width=24),
            TextColumn("{task.description}", markup=False),
            console=console,
            auto_refresh=False,  # redrawn by Progress.run, no thread of its own
            redirect_stdout=False,
            redirect_stderr=stream is sys.stderr,  # print() to stderr also goes above the bar
        )
        self.task = self.progress.add_task("", total=None)
        self.progress.start()
        # Handlers writing to this stream write through the live display's proxy instead (sys.stderr now).
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []
        proxied = getattr(sys.stderr, "rich_proxied_file", None) is stream
        proxy = sys.stderr if proxied else FileProxy(console, stream)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                self._moved.append((handler, handler.setStream(proxy)))

    def update(self, counters: Counters, line: str) -> None:
        total = counters.total or None
        self.progress.update(self.task, total=total, completed=counters.finished, description=line)
        self.progress.refresh()

    def stop(self) -> None:
        try:
            self.progress.stop()
        finally:
            for handler, stream in self._moved:
                handler.setStream(stream)
