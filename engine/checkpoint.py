"""The crash-safe output: an append-only JSONL checkpoint, its fingerprint and its lock.

Files beside each other in the output folder, for a stage output named NAME:
- NAME.jsonl           results, one complete line per finished row, `"id"` then `"input"` first (append-only)
- NAME.skipped.jsonl   rows finished without a result, with the reason (append-only; count as done)
- NAME.superseded.jsonl  records whose input row changed since (moved here when a run redoes the row)
- NAME.errors.jsonl    rows that failed in the latest run (rewritten per run; a rerun retries them)
- NAME.rejects.jsonl   bad or duplicate input rows of the latest run, as `file:line: problem`
- NAME.fingerprint.json  the settings the results were made with (and the latest input file's hash)
- NAME.summary.json    the latest run's summary
- NAME.lock            held while a process writes here

Resume is keyed by row content: a record's `"input"` is the hash of the input row it was made from
(`engine.rows.row_key`), so an input file that grew, was regenerated or converted to CRLF is resumed row by
row: unchanged rows are never redone, changed rows are redone (their old records moved to the superseded
file, never deleted), new rows are done. Only a change of settings refuses the resume.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import ConfigError
from infra.atomic import atomic_write  # noqa: F401 (the engine's writers import it from here)

log = logging.getLogger(__name__)

ID_PREFIX = b'{"id":"'
KEY_INFIX = b'","input":"'
SCAN_CHUNK = 1 << 22


@dataclass
class ScanResult:
    done: dict[str, str | None] = field(default_factory=dict)  # id -> input key (None: a record from before keys)
    repaired: list[str] = field(default_factory=list)  # human-readable notes on torn lines cut off


class Checkpoint:
    def __init__(self, out_dir: Path, name: str):
        self.dir = out_dir
        self.name = name
        self.results = out_dir / f"{name}.jsonl"
        self.skipped = out_dir / f"{name}.skipped.jsonl"
        self.superseded = out_dir / f"{name}.superseded.jsonl"
        self.errors = out_dir / f"{name}.errors.jsonl"
        self.rejects = out_dir / f"{name}.rejects.jsonl"
        self.fingerprint_path = out_dir / f"{name}.fingerprint.json"
        self.summary_path = out_dir / f"{name}.summary.json"
        self.lock_path = out_dir / f"{name}.lock"
        self._lock_file: IO[str] | None = None

    # -- lock -------------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.lock_path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(
                f"{self.results} is being written by {holder} (lock {self.lock_path} is held); "
                "only one process may write an output folder: wait for it, stop it, or use another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock_file = f

    def release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def undo_start(self, *, remove_lock: bool, remove_dir: bool) -> None:
        """After a failed start: remove the lock file and the folder if this start created them (and the
        folder is empty), so a mistyped command leaves nothing behind. Called while the lock is held."""
        if remove_lock:
            self.lock_path.unlink(missing_ok=True)
        if remove_dir:
            try:
                self.dir.rmdir()
            except OSError:  # not empty: something else is there now; keep it
                pass

    # -- fingerprint ------------------------------------------------------------------------------
    def check_fingerprint(self, fingerprint: dict[str, Any], *, fresh: bool) -> None:
        """Refuse to resume results made with other settings; `fresh` moves them aside first. The input may
        change: rows are matched by content (see the module docstring)."""
        has_results = _nonempty(self.results) or _nonempty(self.skipped)
        if fresh and (has_results or self.fingerprint_path.exists()):
            moved = self.move_aside()
            log.warning("--fresh: moved the previous %s output to %s", self.name, moved)
            has_results = False
        if has_results:
            if not self.fingerprint_path.exists():
                raise ConfigError(
                    f"{self.results} has rows but no {self.fingerprint_path.name}, so the settings they were "
                    "made with are unknown; pass --fresh to move them aside and start over"
                )
            old = orjson.loads(self.fingerprint_path.read_bytes())
            diffs = _differences(old, fingerprint)
            if diffs:
                raise ConfigError(
                    f"{self.results} was made with different settings, so it cannot be resumed:\n  "
                    + "\n  ".join(diffs)
                    + "\nRun with the same settings to resume, or pass --fresh to move the old output aside "
                    "(it is kept, never deleted) and start over."
                )
        atomic_write(self.fingerprint_path, orjson.dumps(fingerprint, option=orjson.OPT_INDENT_2))

    def move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.dir / "previous" / f"{self.name}-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.dir / "previous" / f"{self.name}-{stamp}-{n}"
        target.mkdir(parents=True)
        for path in (self.results, self.skipped, self.superseded, self.errors, self.rejects, self.fingerprint_path,
                     self.summary_path):
            if path.exists():
                path.rename(target / path.name)
        return target

    # -- scan -------------------------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Ids already finished (results and skipped); torn last lines are cut off and reported."""
        result = ScanResult()
        for path in (self.results, self.skipped):
            if path.exists():
                note = repair_torn_tail(path)
                if note:
                    result.repaired.append(note)
                    log.warning(note)
                scan_ids(path, result.done)
        return result

    def supersede(self, ids: set[str]) -> int:
        """Move the records of `ids` (rows whose input changed) from the results and skipped files to the
        superseded file; returns how many records moved. Crash-safe: the moved lines are appended and
        fsynced before each file is replaced by its filtered copy, so a kill leaves a record in both
        places at worst (moved again next time), never in neither."""
        if not ids:
            return 0
        moved = 0
        with open(self.superseded, "ab") as out:
            for path in (self.results, self.skipped):
                if not path.exists():
                    continue
                keep_tmp = path.with_suffix(path.suffix + ".tmp")
                with open(path, "rb") as src, open(keep_tmp, "wb") as keep:
                    for line in src:
                        if line.strip() and _line_id(path, line) in ids:
                            out.write(line)
                            moved += 1
                        else:
                            keep.write(line)
                    keep.flush()
                    os.fsync(keep.fileno())
                out.flush()
                os.fsync(out.fileno())
                os.replace(keep_tmp, path)
        return moved

    def open_writer(self, fsync_every_s: float) -> Writer:
        return Writer(self, fsync_every_s)


def fingerprint(stage: str, settings: dict[str, Any], input_sha256: str) -> dict[str, Any]:
    canonical = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    return {
        "stage": stage,
        "settings": settings,
        "settings_sha256": hashlib.sha256(canonical).hexdigest(),
        "input_sha256": input_sha256,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    if old.get("stage") != new.get("stage"):
        diffs.append(f"stage: was {old.get('stage')!r}, now {new.get('stage')!r}")
    old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            diffs.append(f"{key}: was {old_settings.get(key)!r}, now {new_settings.get(key)!r}")
    return diffs  # the input file may differ: rows are matched by their content, one by one


def repair_torn_tail(path: Path) -> str | None:
    """Cut off a last line that a kill left incomplete (not valid JSON); end a complete one that lacks its
    newline."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "r+b") as f:
        f.seek(max(0, size - 1))
        ends_clean = f.read(1) == b"\n"
        # Find the start of the last line (complete or not).
        end = size - 1 if ends_clean else size
        pos = end
        block = 1 << 16
        start = 0
        while pos > 0:
            step = min(block, pos)
            f.seek(pos - step)
            data = f.read(step)
            idx = data.rfind(b"\n")
            if idx >= 0:
                start = pos - step + idx + 1
                break
            pos -= step
        f.seek(start)
        last = f.read(end - start)
        if ends_clean and _valid_json(last):
            return None
        if not ends_clean and last.strip() and _valid_json(last):
            # A complete record missing only its newline (no proper prefix of a JSON object is valid JSON):
            # keep it, so it is not paid again, and end it, so the next record is not glued onto it.
            f.seek(size)
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return f"{path}:{_count_lines(path)}: the last record had no newline; added one (the record is kept)"
        f.truncate(start)
        os.fsync(f.fileno())
    lineno = _count_lines(path) + 1
    return (
        f"{path}:{lineno}: cut off a torn last line ({len(last)} bytes, from an interrupted write); "
        "that row will be done again"
    )


def _valid_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(SCAN_CHUNK):
            n += block.count(b"\n")
    return n


def scan_ids(path: Path, into: dict[str, str | None]) -> None:
    """Map every line's id to its input key in `into`, read from the line's prefix (we write "id" then
    "input" first); other lines are parsed. A later line of the same id wins.

    One reusable buffer filled with readinto and searched with find: fresh multi-MB buffers per chunk
    cost more in page faults than the scan itself (see bench/engine_bench.py --scan).
    """
    buf = bytearray(SCAN_CHUNK)
    have = 0  # bytes of an unfinished line kept at the front of buf
    lineno = 0
    prefix_len = len(ID_PREFIX)
    with open(path, "rb", buffering=0) as f:
        while True:
            with memoryview(buf) as view:
                n = f.readinto(view[have:])
            if not n:
                break
            end = have + n
            start = 0
            while (nl := buf.find(b"\n", start, end)) >= 0:
                lineno += 1
                quote = buf.find(b'"', start + prefix_len, nl)
                key_at = quote + len(KEY_INFIX)
                key_end = buf.find(b'"', key_at, nl)
                if (quote > 0 and key_end > 0 and buf.startswith(ID_PREFIX, start)
                        and buf.startswith(KEY_INFIX, quote) and buf[nl - 1] == 0x7D):  # line ends with "}"
                    into[buf[start + prefix_len : quote].decode()] = buf[key_at:key_end].decode()
                else:
                    row_id, key = _parse_id(path, lineno, bytes(buf[start:nl]))
                    into[row_id] = key
                start = nl + 1
            have = end - start
            buf[:have] = buf[start:end]
            if have == len(buf):  # one line longer than the buffer: grow it
                buf.extend(bytes(len(buf)))
    if bytes(buf[:have]).strip():
        row_id, key = _parse_id(path, lineno + 1, bytes(buf[:have]))
        into[row_id] = key


def _line_id(path: Path, line: bytes) -> str:
    if line.startswith(ID_PREFIX) and (quote := line.find(b'"', len(ID_PREFIX))) > 0:
        return line[len(ID_PREFIX) : quote].decode()
    return _parse_id(path, 0, line)[0]


def _parse_id(path: Path, lineno: int, line: bytes) -> tuple[str, str | None]:
    try:
        obj = orjson.loads(line)
        key = obj.get("input")
        return str(obj["id"]), key if isinstance(key, str) else None
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path}:{lineno}: checkpoint line is not a JSON object with an id ({e}); the file was edited or "
            "damaged: fix or delete that line, or pass --fresh to move the file aside"
        ) from e


def _nonempty(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a checkpoint-style JSONL file ([] when absent); a torn last line is left out
    (the next run of the stage repairs it)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return out


class Writer:
    """The single writer of a checkpoint: one complete line per record, flushed per row, fsynced often."""

    def __init__(self, checkpoint: Checkpoint, fsync_every_s: float):
        self.checkpoint = checkpoint
        self.fsync_every_s = fsync_every_s
        self._results = open(checkpoint.results, "ab")
        self._skipped = open(checkpoint.skipped, "ab")
        # Errors and rejects describe the latest run only.
        self._errors = open(checkpoint.errors, "wb")
        self._rejects = open(checkpoint.rejects, "wb")
        self._files = (self._results, self._skipped, self._errors, self._rejects)
        self._dirty = False
        self._last_sync = time.monotonic()

    def result(self, record: dict[str, Any]) -> None:
        self._write(self._results, record)

    def skip(self, record: dict[str, Any]) -> None:
        self._write(self._skipped, record)

    def error(self, record: dict[str, Any]) -> None:
        self._write(self._errors, record)

    def reject(self, record: dict[str, Any]) -> None:
        self._write(self._rejects, record)

    def _write(self, f: IO[bytes], record: dict[str, Any]) -> None:
        f.write(orjson.dumps(record) + b"\n")
        f.flush()
        self._dirty = True

    async def sync_forever(self) -> None:
        """Background task: fsync at least every `fsync_every_s` while there are new lines."""
        while True:
            await asyncio.sleep(self.fsync_every_s)
            if self._dirty:
                self._dirty = False
                await asyncio.to_thread(self.fsync)

    def fsync(self) -> None:
        for f in self._files:
            if not f.closed:
                os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        for f in self._files:
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()
