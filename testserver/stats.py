"""Server-side counters and a bounded log of recent requests, served by GET /_stats."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

# Status recorded when the client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499
# Status recorded for a connection the server dropped on purpose.
DROPPED = 0


class Stats:
    """Counters plus a ring of the last `log_size` requests.

    Each log entry is a dict: seq, t (arrival, `time.monotonic()`: the same clock in every process on
    Linux, so a test can compare it with its own), wall (arrival, `time.time()`), t_end (monotonic, None
    while in flight), model, n, kind ("generate" or "judge"), prompt_hash (12 hex chars), status, fault.
    """

    def __init__(self, log_size: int):
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.usage: dict[str, Counter[str]] = {}
        self.in_flight = 0
        self.in_flight_max = 0
        # files_uploaded, batches_created, retrieves, downloads, token_limit_exceeded, enqueued_tokens_max
        self.batch: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)

    def resize(self, log_size: int) -> None:
        if log_size != self.log.maxlen:
            self.log = deque(self.log, maxlen=log_size)

    def begin(self, model: str, n: int, kind: str, prompt_hash: str, fault: str | None) -> dict[str, Any]:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.in_flight_max:
            self.in_flight_max = self.in_flight
        self.by_model[model] += 1
        self.by_kind[kind] += 1
        if fault is not None:
            self.by_fault[fault] += 1
        entry = {
            "seq": self.requests,
            "t": time.monotonic(),
            "wall": time.time(),
            "t_end": None,
            "model": model,
            "n": n,
            "kind": kind,
            "prompt_hash": prompt_hash,
            "status": None,
            "fault": fault,
        }
        self.log.append(entry)
        return entry

    def end(self, entry: dict[str, Any], status: int) -> None:
        self.in_flight -= 1
        self.by_status[status] += 1
        entry["status"] = status
        entry["t_end"] = time.monotonic()

    def reject(self, status: int) -> None:
        """A request refused before it was understood (bad JSON, unknown model): counted, not logged."""
        self.requests += 1
        self.by_status[status] += 1

    def add_usage(self, model: str, usage: dict[str, Any]) -> None:
        c = self.usage.get(model)
        if c is None:
            c = self.usage[model] = Counter()
        c["prompt_tokens"] += usage["prompt_tokens"]
        c["completion_tokens"] += usage["completion_tokens"]
        c["cached_tokens"] += usage["prompt_tokens_details"]["cached_tokens"]
        c["reasoning_tokens"] += usage["completion_tokens_details"]["reasoning_tokens"]

    def snapshot(self, *, log: bool = True, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """A JSON-ready copy; `since` keeps log entries with seq > since, `limit` the last `limit` of them."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_fault": dict(self.by_fault),
            "by_model": dict(self.by_model),
            "by_kind": dict(self.by_kind),
            "usage": {m: dict(c) for m, c in self.usage.items()},
            "in_flight": self.in_flight,
            "in_flight_max": self.in_flight_max,
            "batch": dict(self.batch),
            "started": self.started,
            "started_wall": self.started_wall,
            "now": time.monotonic(),
        }
        if log:
            entries = [dict(e) for e in self.log if e["seq"] > since]
            out["log"] = entries[-limit:] if limit else entries
        return out
