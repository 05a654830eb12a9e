"""Step: split the preference pairs into train and validation sets (engine/split.py, by prompt hash)."""

from __future__ import annotations

import logging
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from steps.names import Artifact
from steps.records import JsonlFile
from steps.scratch import scratch_dir

logger = logging.getLogger(__name__)


@step
def split_dataset(
    preferences: JsonlFile,
    val_fraction: float = 0.1,
) -> tuple[
    Annotated[JsonlFile, ArtifactConfig(name=Artifact.TRAIN_SET)],
    Annotated[JsonlFile, ArtifactConfig(name=Artifact.VAL_SET)],
]:
    """Split by a hash of each prompt: stable as rows come and go, both pairs of a prompt on one side."""
    from engine.split import split_preferences

    out_dir = scratch_dir("split-")  # removed once ZenML has stored train_set and val_set
    result = split_preferences(preferences.path, out_dir, val_fraction)
    logger.info("%s", result.render())
    log_metadata(metadata={"n_train": result.n_train, "n_val": result.n_val, "val_fraction": val_fraction})
    return JsonlFile.of(result.train_path), JsonlFile.of(result.val_path)


@step
def merge_preferences(
    preferences: JsonlFile,
    earlier: JsonlFile,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.PREFERENCES_ALL)]:
    """Rounds with `data: all`: this round's pairs followed by an earlier round's, byte for byte (the split then
    puts every pair of a prompt on one side, whichever round it came from)."""
    out = scratch_dir("merge-") / "preferences.jsonl"
    with open(out, "wb") as dst:
        for part in (preferences, earlier):
            data = part.path.read_bytes()
            dst.write(data if not data or data.endswith(b"\n") else data + b"\n")
    merged = JsonlFile.of(out)
    log_metadata(metadata={"rows": merged.rows, "this_round": preferences.rows, "earlier": earlier.rows})
    return merged
