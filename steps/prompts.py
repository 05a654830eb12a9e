"""Step: the prompt subset this run samples from (the first `limit` rows of the prompt file), or its hold-out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from engine.rows import file_sha256
from stages.split import write_subset
from steps.names import Artifact
from steps.records import JsonlFile
from steps.scratch import scratch_dir

logger = logging.getLogger(__name__)

SIDES = ("sample", "holdout")


@step
def select_prompts(
    prompts_file: str,
    prompts_sha256: str,
    limit: int | None = None,
    holdout_fraction: float = 0.0,
    side: str = "sample",
    offset: int = 0,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.PROMPTS)]:
    """Copy the first `limit` non-blank rows (all when None) of `prompts_file` into a versioned artifact.

    With `holdout_fraction` > 0, a row whose prompt hashes below it (stages.split, salt "holdout-v1:") is held
    out: `side="sample"` skips it (before `limit` counts), `side="holdout"` keeps only such rows (the A/B's
    prompts, which no model was sampled or trained on). `prompts_sha256` is the file's hash taken when the run
    was launched: it makes the step's cache key follow the file's content, and a file edited mid-run is refused.
    `offset` skips that many of the side's rows first (rounds: each round samples a fresh slice).
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if not 0 <= holdout_fraction < 1 or (side == "holdout" and holdout_fraction == 0):
        raise ValueError(f"holdout_fraction must be in [0, 1) (and > 0 for the hold-out), got {holdout_fraction}")
    source = Path(prompts_file)
    actual = file_sha256(source)
    if actual != prompts_sha256:
        raise RuntimeError(
            f"{source} changed after the run was launched (sha256 {prompts_sha256[:12]}… then, {actual[:12]}… now); "
            "launch the run again"
        )
    out = scratch_dir("prompt-subset-") / "prompts.jsonl"  # removed once ZenML has stored the subset
    kept, held = write_subset(source, out, limit=limit, holdout_fraction=holdout_fraction, side=side, offset=offset)
    subset = JsonlFile.of(out)
    logger.info("prompt %s: %d row(s) of %s (%d on the other side)", side, kept, source, held)
    log_metadata(metadata={"source": str(source), "source_sha256": actual, "rows": kept, "side": side,
                           "offset": offset,
                           "holdout_fraction": holdout_fraction, "limit": limit if limit is not None else "all"})
    return subset
