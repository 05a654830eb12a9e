"""Read and check DPO preference files (TRL's preference format) before any GPU time is spent.

A row is `{"prompt", "chosen", "rejected", ...}`, either conversational (`prompt` a list of messages,
`chosen`/`rejected` lists ending with the assistant message) or plain strings. The rules are the split stage's
own (`infra.preference_rows`: one check, one place). Other keys (`id`, `judge`) are dropped: the trainer needs
only the three columns, and a nested `judge` dict would only burden `datasets`.
"""

from __future__ import annotations

from pathlib import Path

from infra.preference_rows import COLUMNS, RowFormat, check_preference_file
from training.errors import TrainingInputError

__all__ = ["COLUMNS", "RowFormat", "load_preference_rows"]


def load_preference_rows(path: Path) -> tuple[list[dict], RowFormat]:
    """Return the rows of a preference JSONL file (prompt/chosen/rejected only) and their shared format.

    Raises TrainingInputError naming the file, or file:line, for a missing or empty file, bad JSON, a row
    the split would refuse (infra.preference_rows), or rows that mix conversational and string formats.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"{path}: preference data file not found. Create it or point data_dir elsewhere.")
    rows: list[dict] = []
    row_format: RowFormat | None = None
    for line in check_preference_file(path):
        if line.problem is not None:
            raise TrainingInputError(f"{line.message}.")
        rows.append({k: (line.row or {})[k] for k in COLUMNS})
        row_format = row_format or line.row_format
    if not rows or row_format is None:
        raise TrainingInputError(f"{path}: preference data file is empty (no rows). Write rows into it first.")
    return rows, row_format
