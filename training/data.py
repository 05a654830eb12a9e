"""Read and check DPO preference files (TRL's preference format) before any GPU time is spent.

A row is `{"prompt", "chosen", "rejected", ...}`, either conversational (`prompt` a list of messages,
`chosen`/`rejected` lists holding the assistant message) or plain strings. Other keys (`id`, `judge`) are
dropped: the trainer needs only the three columns, and a nested `judge` dict would only burden `datasets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from training.errors import TrainingInputError

RowFormat = Literal["conversational", "string"]
COLUMNS = ("prompt", "chosen", "rejected")


def load_preference_rows(path: Path) -> tuple[list[dict], RowFormat]:
    """Return the rows of a preference JSONL file (prompt/chosen/rejected only) and their shared format.

    Raises TrainingInputError naming the file, or file:line, for a missing or empty file, bad JSON, a row
    without prompt/chosen/rejected, or rows that mix conversational and string formats.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"{path}: preference data file not found. Create it or point data_dir elsewhere.")
    rows: list[dict] = []
    first_format: RowFormat | None = None
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainingInputError(f"{where}: not valid JSON ({e.msg}).") from e
            row_format = _check_row(row, where)
            if first_format is None:
                first_format = row_format
            elif row_format != first_format:
                raise TrainingInputError(
                    f"{where}: row is {row_format} but earlier rows are {first_format}; "
                    "use one format per file."
                )
            rows.append({k: row[k] for k in COLUMNS})
    if not rows or first_format is None:
        raise TrainingInputError(f"{path}: preference data file is empty (no rows). Write rows into it first.")
    return rows, first_format


def _check_row(row: object, where: str) -> RowFormat:
    if not isinstance(row, dict):
        raise TrainingInputError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    missing = [k for k in COLUMNS if k not in row or row[k] in (None, "", [])]
    if missing:
        raise TrainingInputError(
            f"{where}: row lacks {', '.join(missing)}; every row needs non-empty prompt, chosen and rejected."
        )
    if all(isinstance(row[k], str) for k in COLUMNS):
        return "string"
    for key in COLUMNS:
        _check_messages(row[key], where, key)
    for key in ("chosen", "rejected"):
        if row[key][-1]["role"] != "assistant":
            raise TrainingInputError(f"{where}: {key} must end with an assistant message.")
    return "conversational"


def _check_messages(messages: object, where: str, key: str) -> None:
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok:
        raise TrainingInputError(
            f"{where}: {key} must be a list of {{'role', 'content'}} messages (or all three columns strings); "
            f"got {json.dumps(messages)[:80]}."
        )
