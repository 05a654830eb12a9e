"""Opening a stage's output for one run, and closing it: how every run starts and ends, live or batch.

The input is checked (and, with --strict, validated) before the output folder is touched; the folder is
locked; the settings are checked against the fingerprint; torn tails are repaired; rows whose input changed
since they were done are superseded; the stage's `before_run` hook runs; the writer is opened. On the way
out the summary is written, the writer closed and the lock released. Also: the rows a run covers
(`rows_in_scope`: valid, unique, within --limit), shared by the runner, batch mode and views.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from engine.checkpoint import Checkpoint, Writer, atomic_write, fingerprint
from engine.errors import InputError
from engine.idset import IdLines
from engine.options import RunOptions
from engine.rows import Reject, Row, Validator, check_input_file, file_sha256, iter_lines, iter_rows, parse_line
from engine.summary import Counters, StageSummary

log = logging.getLogger(__name__)


class StageInfo(Protocol):
    """What opening a stage's output needs of it (engine.runner.Stage adds what running it needs)."""

    name: str  # e.g. "generate"
    output_name: str  # e.g. "completions" -> completions.jsonl

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output; fingerprinted so a resume with other settings is refused."""
        ...

    def validate(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise one input object; raise ValueError(problem) for a bad row."""
        ...


@dataclass(slots=True)
class Duplicate:
    row: Row
    first_line: int


async def rows_in_scope(path: Path, validate: Validator, limit: int | None) -> AsyncIterator[Row | Reject | Duplicate]:
    """The input as the run sees it: rows, rejects and repeats, up to the `limit`-th valid unique row."""
    seen = IdLines()  # 24 bytes a row: a million-row input stays small (engine/idset.py)
    taken = 0
    async for item in iter_rows(path, validate):
        if isinstance(item, Reject):
            yield item
            continue
        first = seen.first(int(item.id, 16), item.line)
        if first is not None:
            yield Duplicate(item, first)
            continue
        taken += 1
        if limit is not None and taken > limit:
            return
        yield item


@dataclass
class Prepass:
    sha256: str
    lines: int
    problems: list[str]


async def prepass(path: Path, validate: Validator, strict: bool) -> Prepass:
    """Hash and count the input; in strict mode also validate every row before any request."""
    sha = await asyncio.to_thread(file_sha256, path)
    lines = 0
    problems: list[str] = []
    name = str(path)
    async for lineno, raw in iter_lines(path):
        lines += 1
        if strict:
            parsed = parse_line(name, lineno, raw, validate)
            if isinstance(parsed, Reject):
                problems.append(parsed.where)
    return Prepass(sha, lines, problems)


@dataclass
class Opened:
    """A stage's output folder, opened for one run: locked, its settings checked, its finished rows known."""

    checkpoint: Checkpoint
    done: dict[str, str | None]  # rows finished before and unchanged since: not done again
    counters: Counters
    writer: Writer
    started: float  # time.monotonic() at the start

    def finish(self, summary: StageSummary, resume_command: str | None) -> StageSummary:
        """Complete the summary and write it beside the results."""
        summary.elapsed_s = time.monotonic() - self.started
        summary.output = self.checkpoint.results
        summary.resume_command = resume_command
        write_summary(self.checkpoint, summary)
        return summary


@asynccontextmanager
async def open_output(
    stage: StageInfo, input_path: Path, out_dir: Path, options: RunOptions,
    *, on_fresh: Callable[[Checkpoint], None] | None = None,
) -> AsyncIterator[Opened]:
    """How every run of a stage starts and ends (live or batch): the input checked before `out_dir` is touched;
    the lock; the fingerprint (a failed start leaves no folder or lock behind); torn tails repaired; rows whose
    input changed superseded; the stage's `before_run` hook; the writer, closed and the lock released at the end.
    `on_fresh`: extra files to move aside with --fresh (before the fingerprint check)."""
    started = time.monotonic()
    check_input_file(input_path, getattr(stage, "input_flag", "the input path"))
    pre = await prepass(input_path, stage.validate, options.strict)  # before --out is touched
    if pre.problems:
        raise InputError(pre.problems)
    checkpoint = Checkpoint(out_dir, stage.output_name)
    new_dir, new_lock = not out_dir.exists(), not checkpoint.lock_path.exists()
    checkpoint.acquire_lock()
    try:
        try:
            if options.fresh and on_fresh is not None:
                on_fresh(checkpoint)
            checkpoint.check_fingerprint(fingerprint(stage.name, stage.settings(), pre.sha256),
                                         fresh=options.fresh)
            scan = checkpoint.scan()
        except BaseException:
            checkpoint.undo_start(remove_lock=new_lock, remove_dir=new_dir)  # a failed start leaves nothing
            raise
        done = await unchanged_rows(checkpoint, input_path, stage.validate, options.limit, scan.done)
        before_run = getattr(stage, "before_run", None)
        if before_run is not None:
            before_run(checkpoint)  # e.g. the judge applies its result filters to the rows in hand
        counters = Counters(done_before=len(done))
        wanted = min(options.limit or pre.lines, pre.lines)
        counters.total = max(0, wanted - len(done))
        writer = checkpoint.open_writer(options.fsync_every_s)
        try:
            yield Opened(checkpoint, done, counters, writer, started)
        finally:
            writer.close()
    finally:
        checkpoint.release_lock()


async def unchanged_rows(
    checkpoint: Checkpoint, path: Path, validate: Validator, limit: int | None, done: dict[str, str | None]
) -> dict[str, str | None]:
    """The finished rows still valid for this input: a row in scope whose content changed since its record
    was made is redone, its old records moved to the superseded file (kept, never deleted). Records from
    before content keys (key None) count as unchanged."""
    if not done:
        return done
    changed: set[str] = set()
    async for item in rows_in_scope(path, validate, limit):
        if isinstance(item, Row) and (key := done.get(item.id, item.key)) is not None and key != item.key:
            changed.add(item.id)
    if not changed:
        return done  # the scan's own dict: no second copy of a million ids
    moved = await asyncio.to_thread(checkpoint.supersede, changed)
    log.warning("%d row(s) of %s changed since they were done: redoing them (%d old record(s) moved to %s)",
                len(changed), path, moved, checkpoint.superseded.name)
    return {k: v for k, v in done.items() if k not in changed}


def write_summary(checkpoint: Checkpoint, summary: StageSummary) -> None:
    atomic_write(checkpoint.summary_path, orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
