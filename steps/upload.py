"""Step: put the train/val files where training reads them: the Modal volume, or a local stand-in folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from steps.names import Artifact
from steps.records import JsonlFile

logger = logging.getLogger(__name__)

TARGETS = ("local", "modal")


@step
def upload_dataset(
    train: JsonlFile,
    val: JsonlFile,
    target: str = "local",
    workdir: str = "",
    place_token: str = "",
) -> Annotated[str, ArtifactConfig(name=Artifact.DATA_PATH)]:
    """Upload to `/data/dpo/<content hash>/` on the Modal volume (`target="modal"`), or copy into
    `<workdir>/volume/data/dpo/<content hash>/` (`"local"`, the same layout on disk). Returns that path.

    The folder is named by the content of both files, so re-uploading the same split is a no-op and a
    new split never overwrites an older one that an adapter was trained on. Its output is a place, not
    data, so `place_token` (steps/place_tokens.py) keys the cache on whether the files it uploaded
    are still there: served from the cache while they are, run again when they are gone.
    """
    from training.config import TRAIN_FILE, VAL_FILE
    from training.upload import dataset_hash, volume_data_dir
    from training.upload import upload_dataset as upload_to_modal

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "modal":
        path = upload_to_modal(train.path, val.path)
    else:
        folder = Path(workdir) / "volume" / volume_data_dir(dataset_hash(train.path, val.path)).lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for src, name in ((train.path, TRAIN_FILE), (val.path, VAL_FILE)):
            shutil.copyfile(src, folder / name)
        path = str(folder)
    from steps.place_tokens import stamp_upload

    if place_token:
        stamp_upload(Path(workdir), target, place_token, path)
    logger.info("training data at %s (%s)", path, target)
    log_metadata(metadata={"target": target, "path": path, "train_rows": train.rows, "val_rows": val.rows,
                           "train_sha256": train.sha256, "val_sha256": val.sha256})
    return path
