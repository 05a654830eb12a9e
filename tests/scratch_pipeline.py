"""A small pipeline for tests/test_step_scratch.py, run in a subprocess: import it only after init_zenml()."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import pipeline, step

from engine.rows import file_sha256
from steps import select_prompts, split_dataset
from steps.records import JsonlFile


@step
def given(path: str) -> JsonlFile:
    return JsonlFile.of(Path(path))


@step
def rows_seen(subset: JsonlFile, train: JsonlFile, val: JsonlFile) -> Annotated[int, "rows_seen"]:
    """A later step reads each stored file (its own copy, loaded after the scratch folders are gone)."""
    return sum(len(f.path.read_bytes().splitlines()) for f in (subset, train, val))


@pipeline(enable_cache=False)
def scratch_pipeline(prompts: str, pairs: str) -> None:
    subset = select_prompts(prompts_file=prompts, prompts_sha256=file_sha256(Path(prompts)), limit=5)
    train, val = split_dataset(given(pairs), val_fraction=0.3)
    rows_seen(subset, train, val)
