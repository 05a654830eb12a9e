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

ROLES = frozenset({"system", "user", "assistant"})
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


def prompt_id(prompt: str | list[dict[str, str]]) -> str:
    """A stable 16-hex-digit id for a prompt: sha256 of its canonical JSON."""
    canonical = orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def row_key(data: dict[str, Any]) -> str:
    """A 16-hex-digit hash of a validated row's content (key order, line endings and fields the stage
    ignores make no difference)."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def check_prompt(value: Any) -> str | list[dict[str, str]]:
    """A prompt is a non-empty string or a non-empty list of {role, content} chat messages."""
    if value is None:
        raise ValueError('missing "prompt"')
    if isinstance(value, str):
        if not value.strip():
            raise ValueError('"prompt" is an empty string')
        return value
    if not isinstance(value, list):
        raise ValueError(f'"prompt" must be a string or a list of messages, got {type(value).__name__}')
    if not value:
        raise ValueError('"prompt" is an empty message list')
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f'"prompt"[{i}] must be an object with role and content, got {type(message).__name__}')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f'"prompt"[{i}].role must be one of {sorted(ROLES)}, got {role!r}')
        if not isinstance(content, str):
            raise ValueError(f'"prompt"[{i}].content must be a string, got {type(content).__name__}')
    if not any(m["content"].strip() for m in value):
        raise ValueError('"prompt" messages are all empty')
    return [{"role": m["role"], "content": m["content"]} for m in value]


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
