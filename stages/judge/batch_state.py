"""What batch mode records in the output folder, so a kill, a closed laptop or a rerun never loses or repeats a
submitted batch: NAME.batches.json, rewritten atomically (engine.checkpoint.atomic_write) at every change.

- `chunks`: one per input file written: its name, round, the requests in it (custom_id -> the row's input key),
  size and input tokens, local input file, then the file id, batch id, status and counts the moment the API gives
  them, and whether its answers were collected into the checkpoint. A chunk waits (no batch id) until the queue
  has room for its tokens; a batch the API refused for its queue limit is recorded in `refused`, and the chunk is
  created again after `not_before`.
- `requests`: per custom_id of a row not finished yet: the batches it was in (`tries`), malformed answers,
  and the token budget its next attempt gets (doubled after an answer cut by the budget).
- `held`: verdicts of one order of a --swap-check row whose other order is still to come (never paid twice),
  with the row's input key: kept while the row is unfinished or failed, reused by a rerun and by --finish-live
  as long as the row is unchanged.
- `usage`: what an unfinished row has spent so far (tokens, dollars), carried into its record.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from engine.checkpoint import atomic_write
from engine.errors import ConfigError

VERSION = 1
SWAP_SUFFIX = ".swap"  # the custom_id of a row's second, reversed-order request (--swap-check)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def custom_id(row_id: str, second: bool) -> str:
    return row_id + SWAP_SUFFIX if second else row_id


def row_of(cid: str) -> tuple[str, bool]:
    """(row id, whether it is the reversed-order request) of a custom_id."""
    return (cid.removesuffix(SWAP_SUFFIX), True) if cid.endswith(SWAP_SUFFIX) else (cid, False)


@dataclass
class Chunk:
    name: str  # batch-0001: also names its files in the folder
    round: int
    requests: dict[str, str]  # custom_id -> the row's input key when it was sent
    bytes: int
    tokens: int = 0  # input tokens, counted as `estimate` counts them (0 in a state from before they were counted)
    input_file_id: str | None = None
    batch_id: str | None = None
    # prepared (file written), uploaded, then the batch's own status; waiting: refused for the queue's token limit
    status: str = "prepared"
    request_counts: dict[str, int] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)  # the batch's own errors (e.g. failed validation)
    collected: bool = False
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    refused: list[str] = field(default_factory=list)  # ids of its batches failed with token_limit_exceeded
    not_before: float | None = None  # a refused chunk is created again from this time (epoch seconds) on

    @property
    def enqueued(self) -> bool:
        """Created as a batch that has not ended: its tokens count against the queue's limit."""
        return self.batch_id is not None and not self.terminal

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def file(self, out_dir: Path, name: str, part: str) -> Path:
        """The chunk's local files: NAME.batch-0001.input.jsonl, .output.jsonl, .errors.jsonl."""
        return out_dir / f"{name}.{self.name}.{part}.jsonl"

    def update(self, batch: Any) -> bool:
        """Take the status, counts, file ids and errors of an openai `Batch`; whether anything changed."""
        counts = batch.request_counts.model_dump() if batch.request_counts is not None else None
        errors = (
            [f"line {e.line}: {e.message}" if e.line else str(e.message) for e in (batch.errors.data or [])]
            if batch.errors is not None
            else []
        )
        new = (batch.status, counts, batch.output_file_id, batch.error_file_id, errors)
        old = (self.status, self.request_counts, self.output_file_id, self.error_file_id, self.errors)
        if new == old:
            return False
        self.status, self.request_counts, self.output_file_id, self.error_file_id, self.errors = new
        if self.terminal and self.finished_at is None:
            self.finished_at = time.time()
        return True


@dataclass
class BatchState:
    path: Path
    chunks: list[Chunk] = field(default_factory=list)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> BatchState:
        if not path.exists():
            return cls(path)
        try:
            raw = orjson.loads(path.read_bytes())
            if raw.get("version") != VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {VERSION}")
            names = {f.name for f in fields(Chunk)}
            chunks = [Chunk(**{k: v for k, v in c.items() if k in names}) for c in raw["chunks"]]
            return cls(path, chunks, raw["requests"], raw["held"], raw["usage"])
        except (ValueError, KeyError, TypeError) as e:  # orjson.JSONDecodeError is a ValueError
            raise ConfigError(
                f"{path} cannot be read ({e}); it records the batches submitted for this folder: restore it, or "
                "pass --fresh to move the folder's output aside and start over"
            ) from e

    def save(self) -> None:
        data = {
            "version": VERSION,
            "chunks": [asdict(c) for c in self.chunks],
            "requests": self.requests,
            "held": self.held,
            "usage": self.usage,
        }
        atomic_write(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def draft(self) -> BatchState:
        """A copy to change while a batch is collected: the state saved meanwhile (a second Ctrl-C saves it) stays
        the one from before, so collecting that batch again counts no attempt twice (see `adopt`)."""
        return BatchState(self.path, self.chunks, *copy.deepcopy((self.requests, self.held, self.usage)))

    def adopt(self, draft: BatchState) -> None:
        """Take a draft's requests, held verdicts and usage (once the batch's records are on disk)."""
        self.requests, self.held, self.usage = draft.requests, draft.held, draft.usage

    def open_chunks(self) -> list[Chunk]:
        return [c for c in self.chunks if not c.collected]

    def enqueued_tokens(self) -> int:
        return sum(c.tokens for c in self.open_chunks() if c.enqueued)

    def open_requests(self) -> set[str]:
        return {cid for c in self.open_chunks() for cid in c.requests}

    def open_rows(self) -> set[str]:
        """The ids of rows with a request in a chunk not collected yet."""
        return {row_of(cid)[0] for cid in self.open_requests()}

    def next_name(self) -> str:
        return f"batch-{len(self.chunks) + 1:04d}"

    def held_verdict(self, cid: str, key: str) -> dict[str, Any] | None:
        """The verdict held for this request of the row with input key `key`; None if none or the row changed."""
        held = self.held.get(cid)
        return held if held is not None and held.get("input") == key else None

    def forget_if_changed(self, row_id: str, key: str) -> None:
        """A row whose input changed since a verdict was held for it starts afresh (the verdict was for other text)."""
        held = [self.held.get(custom_id(row_id, second)) for second in (False, True)]
        if any(h is not None and h.get("input") != key for h in held):
            self.forget_row(row_id)

    def forget_tries(self, row_id: str) -> None:
        """A row failed for good this run: a rerun starts its requests afresh, but keeps a verdict held for it
        (and what it spent), so the order already answered is not paid again."""
        for cid in (custom_id(row_id, False), custom_id(row_id, True)):
            self.requests.pop(cid, None)

    def forget_row(self, row_id: str) -> None:
        """A row finished, changed or left the input: drop what was kept for it."""
        for cid in (custom_id(row_id, False), custom_id(row_id, True)):
            self.requests.pop(cid, None)
            self.held.pop(cid, None)
        self.usage.pop(row_id, None)


def state_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.batches.json"


def batch_metadata(out_dir: Path, name: str = "preferences") -> dict[str, Any]:
    """What a dashboard shows of batch mode: the batch and file ids, each batch's status and counts ({} if none)."""
    path = state_path(out_dir, name)
    if not path.exists():
        return {}
    chunks = BatchState.load(path).chunks
    return {
        "batch_ids": [c.batch_id for c in chunks if c.batch_id],
        "batch_input_file_ids": [c.input_file_id for c in chunks if c.input_file_id],
        "batches": {
            c.name: {
                "batch_id": c.batch_id,
                "status": c.status,
                "round": c.round,
                "requests": len(c.requests),
                "request_counts": c.request_counts,
            }
            for c in chunks
        },
    }


def uncollected_batches(out_dir: Path, name: str) -> list[Chunk]:
    """Chunks submitted to the Batch API whose answers are not in the checkpoint yet (for live mode's guard)."""
    path = state_path(out_dir, name)
    return BatchState.load(path).open_chunks() if path.exists() else []
