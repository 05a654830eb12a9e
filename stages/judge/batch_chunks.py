"""Packing a round's request lines, in order, into Batch API input files ("chunks") within the per-file limits and
the queue's enqueued-token cap (a chunk over the cap could never be enqueued)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Packed:
    """One input file's lines, and the input key of each request's row (custom_id -> key)."""

    lines: list[bytes] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes: the file written is exactly the lines joined
    tokens: int = 0  # input tokens of its requests (stages/judge/estimate.py: request_tokens)


class Packer:
    """Lines go into the current chunk while it stays within `max_requests` lines, `max_bytes` bytes and
    `chunk_tokens` input tokens (a share of the queue's cap `max_tokens`, so several chunks run at once); the line that
    would pass one starts the next chunk. A line alone over `max_bytes` or `max_tokens` fits in no chunk: refuse it
    first; one alone over `chunk_tokens` gets a chunk of its own."""

    def __init__(self, max_requests: int, max_bytes: int, max_tokens: int, chunk_tokens: int | None = None):
        self.max_requests, self.max_bytes, self.max_tokens = max_requests, max_bytes, max_tokens
        self.chunk_tokens = max_tokens if chunk_tokens is None else min(chunk_tokens, max_tokens)
        self.chunks: list[Packed] = []

    def add(self, cid: str, key: str, line: bytes, tokens: int) -> None:
        if len(line) > self.max_bytes:
            raise ValueError(f"a request line of {len(line):,} bytes is over the {self.max_bytes:,} per file")
        if tokens > self.max_tokens:
            raise ValueError(f"a request of {tokens:,} input tokens is over the {self.max_tokens:,} enqueued at once")
        last = self.chunks[-1] if self.chunks else None
        if (
            last is None
            or len(last.lines) >= self.max_requests
            or last.size + len(line) > self.max_bytes
            or (last.lines and last.tokens + tokens > self.chunk_tokens)  # a line alone over it still goes
        ):
            last = Packed()
            self.chunks.append(last)
        last.lines.append(line)
        last.keys[cid] = key
        last.size += len(line)
        last.tokens += tokens
