"""Packing a round's request lines, in order, into Batch API input files ("chunks") within the per-file limits."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Packed:
    """One input file's lines, and the input key of each request's row (custom_id -> key)."""

    lines: list[bytes] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes: the file written is exactly the lines joined


class Packer:
    """Lines go into the current chunk while it stays within `max_requests` lines and `max_bytes` bytes; the line that
    would pass either starts the next chunk. A line alone over `max_bytes` fits in no file: refuse it first."""

    def __init__(self, max_requests: int, max_bytes: int):
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.chunks: list[Packed] = []

    def add(self, cid: str, key: str, line: bytes) -> None:
        if len(line) > self.max_bytes:
            raise ValueError(f"a request line of {len(line):,} bytes is over the {self.max_bytes:,} per file")
        last = self.chunks[-1] if self.chunks else None
        if last is None or len(last.lines) >= self.max_requests or last.size + len(line) > self.max_bytes:
            last = Packed()
            self.chunks.append(last)
        last.lines.append(line)
        last.keys[cid] = key
        last.size += len(line)
