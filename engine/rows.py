"""Streaming JSONL input: rows are read lazily, validated, given a content-derived id, or rejected.

A row's id is a hash of its prompt, so resume and the train/val split never depend on line order. Its
key is a hash of everything the stage reads from it (the validated row: prompt, completions, reference),
so a resume redoes a row whose content changed and never a row whose content did not.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import orjson

from engine.errors import ConfigError
from infra.prompt_rules import check_prompt, prompt_id

CHUNK = 1 << 20  # bytes per read: one thread hop per MiB, not per line
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark some editors put first: not part of the first row


def check_input_file(path: Path, flag: str) -> None:
    """Fail before anything is created when the input is missing, a folder or unreadable (ConfigError: exit 2)."""
    if not path.exists():
        raise ConfigError(f"input file {path} does not exist; check {flag}")
    if not path.is_file():
        raise ConfigError(f"{path} is a {'folder' if path.is_dir() else 'special file'}, not a JSONL file; "
                          f"give {flag} the file itself (e.g. {path / 'completions.jsonl'})")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror}); check {flag} and the file's permissions") from e


@dataclass(slots=True)
class Row:
    id: str
    line: int
    data: dict[str, Any]  # the validated, normalised row (always has "prompt")
    key: str = ""  # row_key(data): results record it as "input"; a resume redoes the row when it differs


@dataclass(slots=True)
class Reject:
    file: str
    line: int
    problem: str
    raw: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"

    def record(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "problem": self.problem, "raw": self.raw}


Validator = Callable[[dict[str, Any]], dict[str, Any]]  # raises ValueError(problem)




def row_key(data: dict[str, Any]) -> str:
    """A 16-hex-digit hash of a validated row's content (key order, line endings and fields the stage
    ignores make no difference)."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]




def reference_text(value: Any) -> str | None:
    """The reference completion as text: a string, or the assistant messages' content joined."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return "\n".join(m["content"] for m in value if m.get("role", "assistant") == "assistant")
    raise ValueError('"completion" must be a string or a list of messages with string content')


def validate_prompt_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The generate stage's input: {"prompt", "completion"?} as in TRL's prompt-completion format."""
    row: dict[str, Any] = {"prompt": check_prompt(obj.get("prompt"))}
    # A preference row (e.g. the split's val.jsonl) has no `completion`: its chosen text is the reference.
    reference = reference_text(obj.get("completion", obj.get("reference", obj.get("chosen"))))
    if reference is not None:
        row["reference"] = reference
    return row


def parse_line(file: str, lineno: int, raw: bytes, validate: Validator) -> Row | Reject:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Reject(file, lineno, f"invalid JSON ({e})", _preview(raw))
    if not isinstance(obj, dict):
        return Reject(file, lineno, f"expected a JSON object, got {type(obj).__name__}", _preview(raw))
    try:
        data = validate(obj)
    except ValueError as e:
        return Reject(file, lineno, str(e), _preview(raw))
    return Row(prompt_id(data["prompt"]), lineno, data, row_key(data))


def _preview(raw: bytes) -> str:
    return raw[:200].decode("utf-8", "replace")


async def iter_lines(path: Path) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (line number, line bytes) for non-blank lines, reading the file a chunk at a time."""
    lineno = 0
    tail = b""
    first = True
    async with aiofiles.open(path, "rb") as f:
        while True:
            chunk = await f.read(CHUNK)
            if not chunk:
                break
            if first:
                chunk = chunk.removeprefix(BOM)
                first = False
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                lineno += 1
                if line.strip():
                    yield lineno, line
    if tail.strip():
        yield lineno + 1, tail


async def iter_rows(path: Path, validate: Validator) -> AsyncIterator[Row | Reject]:
    name = str(path)
    async for lineno, raw in iter_lines(path):
        yield parse_line(name, lineno, raw, validate)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
