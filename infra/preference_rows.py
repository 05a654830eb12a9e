"""What a valid DPO preference row is: one check, shared by the split stage and training.

A row is TRL's preference format, `{"prompt", "chosen", "rejected", ...}`, in one of two forms:
- conversational: `prompt` a list of {role, content} messages (infra.prompt_rules.check_prompt's rules),
  `chosen` and `rejected` non-empty message lists ending with an assistant message;
- string: all three non-blank strings.
`chosen` must differ from `rejected` (the pair would teach nothing), and a file holds one form only.
Other keys (`id`, `judge`) are allowed and ignored. No torch, ZenML or engine import here: the engine, the arena
and the training container (which mounts infra/, not engine/) import it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from infra.prompt_rules import ROLES, check_prompt, prompt_id

RowFormat = Literal["conversational", "string"]
COLUMNS = ("prompt", "chosen", "rejected")


def check_preference_row(obj: object) -> tuple[str, RowFormat]:
    """The prompt id and format of a valid preference row; ValueError(problem) otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in COLUMNS if obj.get(k) is None]
    if missing:
        names = ", ".join(f'"{k}"' for k in missing)
        raise ValueError(f"missing {names}; every row needs prompt, chosen and rejected")
    prompt = check_prompt(obj["prompt"])
    row_format: RowFormat = "string" if isinstance(prompt, str) else "conversational"
    for name in ("chosen", "rejected"):
        _check_answer(name, obj[name], row_format)
    if obj["chosen"] == obj["rejected"]:
        raise ValueError('"chosen" equals "rejected": the pair teaches nothing')
    return prompt_id(prompt), row_format


def _check_answer(name: str, value: Any, row_format: RowFormat) -> None:
    if row_format == "string":
        if not isinstance(value, str):
            raise ValueError(f'"{name}" must be a string when the prompt is a string, got {type(value).__name__}')
        if not value.strip():
            raise ValueError(f'"{name}" is empty')
        return
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{name}" must be a non-empty list of messages when the prompt is a message list')
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ValueError(f'"{name}"[{i}] must be a message {{"role": one of {sorted(ROLES)}, "content": string}}')
    if value[-1]["role"] != "assistant":
        raise ValueError(f'"{name}" must end with an assistant message')
    if not any(m["content"].strip() for m in value):
        raise ValueError(f'"{name}" is empty')


@dataclass(frozen=True, slots=True)
class CheckedLine:
    """One non-blank line of a preference file: the row and its prompt id, or the problem."""

    where: str  # "file:line"
    raw: bytes
    row: dict[str, Any] | None = None
    prompt_id: str | None = None
    row_format: RowFormat | None = None
    problem: str | None = None

    @property
    def message(self) -> str:
        return f"{self.where}: {self.problem}"


def check_preference_file(path: Path) -> Iterator[CheckedLine]:
    """Every non-blank line of a preference JSONL file, checked in order. A valid row whose format differs from
    the first valid row's is a problem too ("use one format per file")."""
    first: RowFormat | None = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            raw = raw.removesuffix(b"\n")  # kept otherwise byte for byte (the split copies rows unchanged)
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                yield CheckedLine(where, raw, problem=f"not valid JSON ({e})")
                continue
            try:
                pid, row_format = check_preference_row(obj)
            except ValueError as e:
                yield CheckedLine(where, raw, problem=str(e))
                continue
            if first is None:
                first = row_format
            elif row_format != first:
                yield CheckedLine(
                    where, raw, problem=f"row is {row_format} but earlier rows are {first}; use one format per file"
                )
                continue
            yield CheckedLine(where, raw, obj, pid, row_format)
