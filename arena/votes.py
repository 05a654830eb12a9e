"""The vote log: append-only JSONL written the way the engine writes its checkpoints, and the running tally.

- One vote, one complete line (`"id"` first), written with a single `write` to a file opened `O_APPEND`,
  then flushed to disk (fsync) before the page says "recorded": a crash or a kill loses no vote.
- On start, a torn last line (a kill mid-write) is cut off and reported, with the engine's own repair
  (`engine.checkpoint.repair_torn_tail`); before every append the tail is checked again under the lock.
- Concurrent browser sessions share one VoteLog (a thread lock); several arena processes on one file are
  safe too (an exclusive `flock` around each append and each read of new lines).
- The tally is read back from the file (only the lines added since the last read), so it counts every
  vote on disk, whichever session or process cast it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.checkpoint import repair_torn_tail
from engine.errors import ConfigError
from stages.evaluate.winrate import WinRate

log = logging.getLogger(__name__)

VOTES = ("left", "right", "tie", "both_bad")  # what the four buttons record
OUTCOMES = ("win", "loss", "tie", "both_bad")  # from the challenger's side


@dataclass(frozen=True)
class Tally:
    """The challenger's record against the baseline; "both bad" counts as a tie in the win rate."""

    baseline: str
    challenger: str
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def win_rate(self) -> WinRate:
        return WinRate(self.wins, self.losses, self.ties + self.both_bad)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "challenger": self.challenger, "both_bad": self.both_bad,
                "win_rate": self.win_rate.to_dict()}


def outcome(record: dict[str, Any]) -> str:
    """The vote's outcome for the record's challenger: win, loss, tie or both_bad."""
    vote = record["vote"]
    if vote in ("tie", "both_bad"):
        return vote
    return "win" if record["winner"] == record["challenger"] else "loss"


class VoteLog:
    """One votes file: append votes safely from many sessions, and count them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._rfd = os.open(self.path, os.O_RDONLY)
        self._lock = threading.Lock()
        self._offset = 0  # bytes of the file already counted
        self._counts: dict[tuple[str, str], Counter[str]] = {}
        self.repaired: str | None = None
        with self._locked():
            self.repaired = repair_torn_tail(self.path)
            if self.repaired:
                log.warning(self.repaired.replace("that row will be done again", "that vote was never recorded"))
            self._read_new()

    def append(self, record: dict[str, Any]) -> None:
        """Write one vote as one complete line and fsync it; the record must start with "id"."""
        if next(iter(record), None) != "id" or record.get("vote") not in VOTES:
            raise ValueError(f"a vote record starts with 'id' and has a vote in {VOTES}; got keys {list(record)[:5]}")
        line = orjson.dumps(record) + b"\n"
        with self._locked():
            self._cut_torn_tail()
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            self._read_new()

    def tally(self, baseline: str, challenger: str) -> Tally:
        with self._locked():
            self._read_new()
            counts = self._counts.get((baseline, challenger), Counter())
        return Tally(baseline, challenger, counts["win"], counts["loss"], counts["tie"], counts["both_bad"])

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._rfd)
                self._fd = self._rfd = -1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._fd < 0:
                raise ConfigError(f"the vote log {self.path} is closed")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _cut_torn_tail(self) -> None:
        """Another process may have died mid-write: never glue a vote onto its torn line."""
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._rfd, 1, size - 1) != b"\n":
            note = repair_torn_tail(self.path)
            if note:
                log.warning(note.replace("that row will be done again", "that vote was never recorded"))

    def _read_new(self) -> None:
        size = os.fstat(self._rfd).st_size
        data = os.pread(self._rfd, max(0, size - self._offset), self._offset)
        end = data.rfind(b"\n") + 1  # complete lines only
        for raw in data[:end].split(b"\n"):
            if raw.strip():
                self._count(raw)
        self._offset += end

    def _count(self, raw: bytes) -> None:
        try:
            record = orjson.loads(raw)
            key = (record["baseline"], record["challenger"])
            result = outcome(record)
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            log.warning("%s: a line after byte %d is not a vote (%s); left out of the tally", self.path,
                        self._offset, e)
            return
        self._counts.setdefault(key, Counter())[result] += 1
