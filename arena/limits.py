"""What the arena lets a visitor spend: tokens per answer, and samples and votes per minute and per session.

The page is the arena's only way in (page.py closes Gradio's direct API routes), but the page's own route,
`/gradio_api/queue/join`, is one a script can speak too, opening a fresh session for every call. So every
sample counts three times: against its session per minute and in total, and against all sessions together per
minute, the bound on GPU time that no number of sessions gets around. Votes count per session (each needs a
round of its own, so the sample limits bound them across sessions). The windows are sliding logs: the
timestamps of the last minute's events, one deque per limit. Nothing here imports Gradio.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, fields

from engine.errors import ConfigError

MINUTE_S = 60.0
MAX_TOKENS = 1024  # most tokens per answer: the served context is 2,048 (prompt + completion), scenes end in ~300


@dataclass(frozen=True)
class ArenaLimits:
    """How much one browser session, and all of them together, may ask of the endpoint."""

    samples_per_minute: int = 6  # per session: a round streams for ~10 s and takes longer to read and vote on
    samples_per_session: int = 200  # per session, in total
    votes_per_minute: int = 6  # per session
    votes_per_session: int = 200  # per session, in total
    samples_per_minute_all: int = 60  # all sessions together: a script can open as many sessions as it likes
    sessions: int = 10_000  # sessions remembered; the one idle longest is forgotten first

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"arena limit {f.name} must be a whole number >= 1; got {value!r}")


class SlidingLog:
    """At most `limit` events in any `window_s` seconds: the timestamps of the window's events (a sliding log)."""

    def __init__(self, limit: int, window_s: float = MINUTE_S):
        self.limit, self.window_s = limit, window_s
        self._times: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        """Seconds until one more event fits (0.0: it fits now)."""
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return 0.0 if len(self._times) < self.limit else self._times[0] + self.window_s - now

    def add(self, now: float) -> None:
        self._times.append(now)


class _Session:
    def __init__(self, limits: ArenaLimits):
        self.samples, self.votes = SlidingLog(limits.samples_per_minute), SlidingLog(limits.votes_per_minute)
        self.n_samples = self.n_votes = 0


class Meter:
    """Counts every session's samples and votes; `sample()` and `vote()` say None (go) or why not, for the page.

    Thread-safe: the page's events run in Gradio's worker threads and its event loop at once.
    """

    def __init__(self, limits: ArenaLimits, clock: Callable[[], float] = time.monotonic):
        self.limits, self._clock = limits, clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._all_samples = SlidingLog(limits.samples_per_minute_all)

    def sample(self, session: str) -> str | None:
        """Count one sample for `session` when every limit allows it; else the page's message (nothing counted)."""
        lim = self.limits
        with self._lock:
            now, s = self._clock(), self._session(session)
            if s.n_samples >= lim.samples_per_session:
                return (f"**Limit reached:** this session has sampled {s.n_samples} rounds, the most one session may "
                        "(--samples-per-session).")
            wait = s.samples.wait_s(now)
            if wait:
                return (f"**Slow down:** this session has sampled {lim.samples_per_minute} rounds in the last minute, "
                        f"the most it may (--samples-per-minute); sample again in {_seconds(wait)}.")
            wait = self._all_samples.wait_s(now)
            if wait:
                return (f"**The arena is busy:** {lim.samples_per_minute_all} rounds were sampled in the last minute "
                        f"across all sessions, the most it allows (--samples-per-minute-all); sample again in "
                        f"{_seconds(wait)}.")
            s.samples.add(now)
            self._all_samples.add(now)
            s.n_samples += 1
        return None

    def vote(self, session: str) -> str | None:
        """Count one vote for `session` when its limits allow it; else the page's message (nothing counted)."""
        lim = self.limits
        with self._lock:
            now, s = self._clock(), self._session(session)
            if s.n_votes >= lim.votes_per_session:
                return (f"**Limit reached:** this session has cast {s.n_votes} votes, the most one session may "
                        "(--votes-per-session); the vote was not recorded.")
            wait = s.votes.wait_s(now)
            if wait:
                return (f"**Slow down:** this session has voted {lim.votes_per_minute} times in the last minute, the "
                        f"most it may (--votes-per-minute); vote again in {_seconds(wait)} (the round keeps).")
            s.votes.add(now)
            s.n_votes += 1
        return None

    def _session(self, session: str) -> _Session:
        s = self._sessions.pop(session, None) or _Session(self.limits)
        self._sessions[session] = s  # most recently used last
        while len(self._sessions) > self.limits.sessions:
            self._sessions.popitem(last=False)
        return s


def _seconds(wait: float) -> str:
    return f"{max(1, math.ceil(wait))} s"
