"""Row id -> first input line, at 24-48 bytes a row: what the engine keeps per input row to find repeated prompts.

A Python `dict[int, int]` costs ~115 bytes per 64-bit id and line (two int objects and the table slot); this
open-addressing table of unsigned 64-bit ids and 32-bit lines, kept a quarter to half full, costs 24 to 48, so a
million-row input adds 24-48 MB instead of ~115. Ids are the first 16 hex digits of a sha256 (engine/rows.py),
spread evenly, so the low bits index the table directly.
"""

from __future__ import annotations

from array import array

_EMPTY = 0  # a free slot; the id 0 is stored as _ZERO (and the real id _ZERO is kept apart)
_ZERO = 1 << 63


class IdLines:
    def __init__(self, capacity: int = 1 << 12) -> None:
        size = 1
        while size < 2 * capacity:
            size <<= 1
        self._ids = array("Q", bytes(8 * size))
        self._lines = array("I", bytes(4 * size))
        self._mask = size - 1
        self._count = 0
        self._zero_line: int | None = None  # the line of the real id _ZERO, which the table cannot hold

    def __len__(self) -> int:
        return self._count

    def first(self, key: int, line: int) -> int | None:
        """The line `key` was first seen on; None (and `line` remembered as its first) when it is new."""
        if key == _ZERO:
            if self._zero_line is not None:
                return self._zero_line
            self._zero_line = line
            self._count += 1
            return None
        stored = key or _ZERO
        ids, mask = self._ids, self._mask
        i = stored & mask
        while True:
            current = ids[i]
            if current == stored:
                return self._lines[i]
            if current == _EMPTY:
                break
            i = (i + 1) & mask
        ids[i] = stored
        self._lines[i] = line
        self._count += 1
        if 2 * self._count > len(ids):
            self._grow()
        return None

    def _grow(self) -> None:
        old_ids, old_lines = self._ids, self._lines
        size = 2 * len(old_ids)
        self._ids = array("Q", bytes(8 * size))
        self._lines = array("I", bytes(4 * size))
        self._mask = size - 1
        ids, lines, mask = self._ids, self._lines, self._mask
        for stored, line in zip(old_ids, old_lines, strict=True):
            if stored != _EMPTY:
                i = stored & mask
                while ids[i] != _EMPTY:
                    i = (i + 1) & mask
                ids[i] = stored
                lines[i] = line
