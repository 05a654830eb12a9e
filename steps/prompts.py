"""Step: the prompt subset this run samples from (the first `limit` rows of the prompt file)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from engine.rows import file_sha256
from steps.names import Artifact
from steps.records import JsonlFile
from steps.scratch import scratch_dir

logger = logging.getLogger(__name__)


@step
def select_prompts(
    prompts_file: str,
    prompts_sha256: str,
    limit: int | None = None,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.PROMPTS)]:
    """Copy the first `limit` non-blank rows (all when None) of `prompts_file` into a versioned artifact.

    `prompts_sha256` is the file's hash taken when the run was launched: it makes the step's cache key
    follow the file's content (a changed file is a new subset), and a file edited mid-run is refused.
    """
    source = Path(prompts_file)
    actual = file_sha256(source)
    if actual != prompts_sha256:
        raise RuntimeError(
            f"{source} changed after the run was launched (sha256 {prompts_sha256[:12]}… then, {actual[:12]}… now); "
            "launch the run again"
        )
    out = scratch_dir("prompt-subset-") / "prompts.jsonl"  # removed once ZenML has stored the subset
    kept = 0
    with open(source, "rb") as src, open(out, "wb") as dst:
        for line in src:
            if not line.strip():
                continue
            if limit is not None and kept >= limit:
                break
            dst.write(line if line.endswith(b"\n") else line + b"\n")
            kept += 1
    subset = JsonlFile.of(out)
    logger.info("prompt subset: %d row(s) of %s", kept, source)
    log_metadata(metadata={"source": str(source), "source_sha256": actual, "rows": kept,
                           "limit": limit if limit is not None else "all"})
    return subset
