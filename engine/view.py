"""A stage's results for one input: the records of a checkpoint made from exactly this input's rows.

A checkpoint folder keyed by settings alone collects results across inputs (a `--limit 100` run, then the
full file; a regenerated completions file): resume by row content means nothing is paid twice. What one
run hands downstream is its view: the records whose id is a row of this input (in scope: valid, unique,
within the limit) and whose `"input"` key matches that row's content, in the checkpoint's order. A view
file is named by its own content hash, so a path handed downstream never changes content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from engine.checkpoint import atomic_write
from engine.output import rows_in_scope
from engine.rows import Row, Validator


async def write_view(results: Path, input_path: Path, validate: Validator, views_dir: Path,
                     limit: int | None = None) -> Path:
    """Write the records of `results` made from rows of `input_path` to `views_dir/<content hash>.jsonl`."""
    wanted: dict[str, str] = {}
    async for item in rows_in_scope(input_path, validate, limit):
        if isinstance(item, Row):
            wanted[item.id] = item.key
    kept: list[bytes] = []
    seen: set[str] = set()
    if results.exists():
        for line in results.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line: the stage's next run repairs it
            row_id, key = record.get("id"), record.get("input")
            # as on resume, a record from before input keys (no "input") counts as made from its row
            if row_id in wanted and key in (wanted[row_id], None) and row_id not in seen:
                seen.add(row_id)
                kept.append(line + b"\n")
    data = b"".join(kept)
    out = views_dir / f"{results.stem}.{hashlib.sha256(data).hexdigest()[:16]}.jsonl"
    if not out.exists():
        views_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out, data)
    return out
