"""The judge's input rows: the generate stage's output, {"prompt", "completions", "reference"?, ...}."""

from __future__ import annotations

from typing import Any

from engine.rows import check_prompt, reference_text


def validate_completions_row(obj: dict[str, Any]) -> dict[str, Any]:
    """Check one completions row; raise ValueError(problem). Empty or repeated completions are not errors
    here: the judge skips such rows with a reason, so they count as done."""
    row: dict[str, Any] = {"prompt": check_prompt(obj.get("prompt"))}
    completions = obj.get("completions")
    if completions is None:
        raise ValueError('missing "completions" (a list of completion strings from the generate stage)')
    if not isinstance(completions, list):
        raise ValueError(f'"completions" must be a list of strings, got {type(completions).__name__}')
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise ValueError(f'"completions"[{i}] must be a string, got {type(text).__name__}')
    row["completions"] = completions
    reference = reference_text(obj.get("reference", obj.get("completion")))
    if reference is not None:
        row["reference"] = reference
    return row
