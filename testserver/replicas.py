"""Modal's web endpoint in front of vLLM replicas: an autoscaler, a router and replicas that batch continuously.

What it models (the ServerOptions `replica*` fields; Modal's names in brackets):
- between `replicas_min` and `replicas_max` replicas [min_containers, max_containers]; the first `replicas_min`
  are warm when the server starts, every later one serves only `replica_startup_s` after it was added;
- a replica runs up to `replica_max_inputs` requests at once [@modal.concurrent(max_inputs)], in parallel, as
  vLLM's continuous batching does: each takes `replica_prefill_s + tokens * replica_token_latency_s`;
- the router sends each request to the least-loaded ready replica with a free slot; the others wait in one FIFO
  queue behind the URL;
- the autoscaler, on every arrival, wants ceil(load / `replica_target_inputs`) replicas [target_inputs], load being
  the requests running plus those queued, and adds replicas (counting those still starting, so a burst does not
  add one per request) up to `replicas_max`; a replica idle for `replica_scaledown_s` [scaledown_window] stops
  while more than the wanted number (and `replicas_min`) are up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

TIMELINE_SIZE = 10_000  # (t, ready, starting) points kept for /_stats
WAITS_KEPT = 10_000  # the latest queue waits kept for the percentiles


class ReplicaOptions(Protocol):
    """The settings a ReplicaPool reads (testserver.options.ServerOptions has them)."""

    replicas_min: int
    replicas_max: int | None
    replica_max_inputs: int
    replica_target_inputs: int | None
    replica_startup_s: float
    replica_prefill_s: float
    replica_token_latency_s: float
    replica_scaledown_s: float


@dataclass(eq=False)
class Replica:
    index: int
    added: float  # monotonic time it was added
    ready_at: float  # when it serves (added + start-up)
    ready: bool = False
    running: int = 0
    served: int = 0
    idle_since: float = 0.0
    check: asyncio.TimerHandle | None = None  # the pending scale-down check (one at most)


class ReplicaPool:
    """The replicas behind one URL. `await serve(seconds)` waits for a slot, holds it `seconds`, frees it."""

    def __init__(self, options: ReplicaOptions, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.t0 = clock()
        self.replicas: list[Replica] = []  # up: starting or ready
        self.history: list[Replica] = []  # every replica ever added, stopped ones included
        self._queue: deque[asyncio.Future[Replica]] = deque()  # FIFO; a cancelled waiter is dropped when met
        self._queued = 0  # waiters in the queue not yet given a slot nor cancelled
        self._timers: set[asyncio.TimerHandle] = set()
        self._next_index = 0
        self.started = self.stopped = 0
        self.peak_ready = self.peak_up = 0
        self.queue_max = 0
        self.waits: deque[float] = deque(maxlen=WAITS_KEPT)
        self.admitted = 0  # requests given a slot
        self.waited = 0  # requests that found no free slot on arrival
        self.wait_sum = self.wait_max = 0.0
        self.served = 0
        self.service_sum = 0.0
        self.first_arrival: float | None = None  # monotonic times bounding the busy span
        self.last_done: float | None = None
        self.timeline: deque[tuple[float, int, int]] = deque(maxlen=TIMELINE_SIZE)
        self._settings(options)
        for _ in range(options.replicas_min):
            self._add(warm=True)
        self._record()

    def configure(self, options: ReplicaOptions) -> None:
        """Take new settings at runtime: idle replicas over a lowered `replicas_max` stop, a raised
        `replicas_min` starts replicas (with the start-up delay)."""
        self._settings(options)
        idle = [r for r in self.replicas if r.ready and r.running == 0]
        for replica in idle[: max(0, len(self.replicas) - self.max)]:
            self._stop(replica)
        if self._loop() is not None:
            self._autoscale()

    def _settings(self, options: ReplicaOptions) -> None:
        if options.replicas_max is None:
            raise ValueError("a ReplicaPool needs replicas_max (None turns the replica model off)")
        self.min = options.replicas_min
        self.max = options.replicas_max
        self.max_inputs = options.replica_max_inputs
        self.target = options.replica_target_inputs or options.replica_max_inputs
        self.startup_s = options.replica_startup_s
        self.prefill_s = options.replica_prefill_s
        self.token_latency_s = options.replica_token_latency_s
        self.scaledown_s = options.replica_scaledown_s

    def service_time(self, tokens: int) -> float:
        return self.prefill_s + tokens * self.token_latency_s

    async def serve(self, seconds: float) -> None:
        """One request: queue for a slot on a ready replica, then hold it for `seconds` (its service time)."""
        replica = await self._acquire()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._release(replica, seconds)

    def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    # -- router -------------------------------------------------------------------------------------

    async def _acquire(self) -> Replica:
        arrived = self._clock()
        if self.first_arrival is None:
            self.first_arrival = arrived
        waiter: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._queued += 1
        self._autoscale()
        self._dispatch()
        if not waiter.done():
            self.waited += 1
            self.queue_max = max(self.queue_max, len(self._queue))
        try:
            replica = await waiter
        except asyncio.CancelledError:  # the client went away while queued
            if waiter.cancelled():
                self._queued -= 1
            else:
                self._free(waiter.result())  # a slot was given just as it left
            raise
        wait = self._clock() - arrived
        self.admitted += 1
        self.waits.append(wait)
        self.wait_sum += wait
        self.wait_max = max(self.wait_max, wait)
        return replica

    def _dispatch(self) -> None:
        """Give queued requests, oldest first, to the least-loaded ready replicas with a free slot."""
        while self._queue:
            waiter = self._queue[0]
            if waiter.done():  # cancelled while queued
                self._queue.popleft()
                continue
            free = [r for r in self.replicas if r.ready and r.running < self.max_inputs]
            if not free:
                return
            replica = min(free, key=lambda r: r.running)
            self._queue.popleft()
            self._queued -= 1
            replica.running += 1
            waiter.set_result(replica)

    def _release(self, replica: Replica, seconds: float) -> None:
        replica.served += 1
        self.served += 1
        self.service_sum += seconds
        self.last_done = self._clock()
        self._free(replica)

    def _free(self, replica: Replica) -> None:
        replica.running -= 1
        if replica.running == 0:
            replica.idle_since = self._clock()
            self._check_later(replica, self.scaledown_s)
        self._dispatch()

    # -- autoscaler ---------------------------------------------------------------------------------

    def wanted(self) -> int:
        load = sum(r.running for r in self.replicas) + self._queued
        return min(self.max, max(self.min, math.ceil(load / self.target)))

    def _autoscale(self) -> None:
        for _ in range(self.wanted() - len(self.replicas)):
            self._add()

    def _add(self, *, warm: bool = False) -> None:
        now = self._clock()
        startup = 0.0 if warm else self.startup_s
        replica = Replica(self._next_index, now, now + startup, idle_since=now)
        self._next_index += 1
        self.replicas.append(replica)
        self.history.append(replica)
        self.started += 1
        if startup == 0 or self._loop() is None:
            self._ready(replica)
        else:
            self._later(startup, self._ready, replica)
            self._record()

    def _ready(self, replica: Replica) -> None:
        if replica not in self.replicas:
            return
        replica.ready = True
        replica.idle_since = self._clock()
        self._record()
        self._dispatch()
        if replica.running == 0:
            self._check_later(replica, self.scaledown_s)

    def _check_later(self, replica: Replica, delay: float) -> None:
        if replica.check is None:
            replica.check = self._later(delay, self._maybe_stop, replica)

    def _maybe_stop(self, replica: Replica) -> None:
        """Stop `replica` if it has been idle for the scale-down window and fewer replicas are wanted; otherwise
        look again when its window could end (a busy replica is looked at again when it next goes idle)."""
        replica.check = None
        if replica not in self.replicas or replica.running > 0:
            return
        idle_for = self._clock() - replica.idle_since
        if idle_for < self.scaledown_s - 1e-3:
            self._check_later(replica, self.scaledown_s - idle_for)
        elif len(self.replicas) > self.wanted():
            self._stop(replica)
        else:
            self._check_later(replica, self.scaledown_s)  # still wanted (replicas_min, or load elsewhere)

    def _stop(self, replica: Replica) -> None:
        if replica.check is not None:
            replica.check.cancel()
            self._timers.discard(replica.check)
            replica.check = None
        self.replicas.remove(replica)
        self.stopped += 1
        self._record()

    # -- bookkeeping --------------------------------------------------------------------------------

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def _later(self, delay: float, callback: Callable[[Replica], None], replica: Replica) -> asyncio.TimerHandle | None:
        """`callback(replica)` after `delay` seconds on the running loop (None, and nothing scheduled, without one)."""
        loop = self._loop()
        if loop is None:
            return None
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            self._timers.discard(handle)  # type: ignore[arg-type]
            callback(replica)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)
        return handle

    def _record(self) -> None:
        ready = sum(r.ready for r in self.replicas)
        up = len(self.replicas)
        self.peak_ready = max(self.peak_ready, ready)
        self.peak_up = max(self.peak_up, up)
        point = (round(self._clock() - self.t0, 4), ready, up - ready)
        if not self.timeline or self.timeline[-1][1:] != point[1:]:
            self.timeline.append(point)

    def snapshot(self) -> dict[str, Any]:
        """What GET /_stats reports under "replicas": counts now, peaks, queue waits, the replica count over time."""
        waits = sorted(self.waits)

        def pct(q: float) -> float:
            return round(waits[min(len(waits) - 1, int(q * len(waits)))], 4) if waits else 0.0

        ready = sum(r.ready for r in self.replicas)
        return {
            "ready": ready,
            "starting": len(self.replicas) - ready,
            "peak_ready": self.peak_ready,
            "peak_replicas": self.peak_up,
            "started": self.started,
            "stopped": self.stopped,
            "running": sum(r.running for r in self.replicas),
            "queued": self._queued,
            "queue_max": self.queue_max,
            "queue_waits": {  # from arrival to a slot; the percentiles over the latest WAITS_KEPT
                "count": self.admitted,
                "waited": self.waited,
                "mean_s": round(self.wait_sum / self.admitted, 4) if self.admitted else 0.0,
                "p50_s": pct(0.5),
                "p95_s": pct(0.95),
                "max_s": round(self.wait_max, 4),
            },
            "served": self.served,
            "service_mean_s": round(self.service_sum / self.served, 4) if self.served else 0.0,
            # from the first request's arrival to the last one served (None before any)
            "busy_s": None if self.last_done is None or self.first_arrival is None
            else round(self.last_done - self.first_arrival, 4),
            "per_replica": [
                {"index": r.index, "up": r in self.replicas, "ready": r.ready, "running": r.running,
                 "served": r.served, "added_s": round(r.added - self.t0, 4), "ready_s": round(r.ready_at - self.t0, 4)}
                for r in self.history
            ],
            "t0": self.t0,  # time.monotonic() when the pool started (the same clock in every process on Linux)
            "timeline": [list(p) for p in self.timeline],  # [seconds since t0, ready, starting]
        }
