"""Step: put the train/val files where training reads them: the target's volume (local: a folder laid out as one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from steps.names import Artifact
from steps.records import JsonlFile
from targets.spec import TargetSpec

logger = logging.getLogger(__name__)


@step
def upload_dataset(
    train: JsonlFile,
    val: JsonlFile,
    target: TargetSpec,
    place_token: str = "",
) -> Annotated[str, ArtifactConfig(name=Artifact.DATA_PATH)]:
    """Upload to `/data/dpo/<content hash>/` on the Modal volume, or copy into
    `<workdir>/volume/data/dpo/<content hash>/` (local, the same layout on disk). Returns that path.

    The folder is named by the content of both files, so re-uploading the same split is a no-op and a
    new split never overwrites an older one that an adapter was trained on. Its output is a place, not
    data, so `place_token` (steps/place_tokens.py) keys the cache on whether the files it uploaded
    are still there: served from the cache while they are, run again when they are gone.
    """
    from steps.place_tokens import stamp_upload
    from targets import open_target

    path = open_target(target).upload(train.path, val.path)
    if place_token:
        stamp_upload(Path(target.workdir), target.profile, place_token, path)
    logger.info("training data at %s (%s)", path, target.profile)
    log_metadata(metadata={"target": target.profile, "path": path, "train_rows": train.rows, "val_rows": val.rows,
                           "train_sha256": train.sha256, "val_sha256": val.sha256})
    return path
