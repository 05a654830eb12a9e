"""Put a train/val preference split (`/data/dpo/<hash>/`) or an adapter (`/adapters/nothing-gpt/<hash>/`) on
the Modal volume, content-addressed.

The folder name is a hash of both files, so the same split always lands in the same folder and a
re-upload is skipped file by file; a changed split gets a new folder and never overwrites the old one.
Pure parts (hashing, paths, what to upload) are separate from the Modal calls so tests need no service.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from infra.adapter_hash import ADAPTER_CONFIG, adapter_folder_name, adapter_sha256
from infra.names import NAMES
from training.config import TRAIN_FILE, VAL_FILE
from training.data import load_preference_rows
from training.modal_auth import modal_auth_errors, require_modal_credentials

logger = logging.getLogger(__name__)

HASH_CHARS = 16  # 64 bits: plenty to tell splits apart, short enough to read in a path


def dataset_hash(train: Path, val: Path) -> str:
    """Hash of both files' contents, each under its role (swapping train and val changes it)."""
    h = hashlib.sha256()
    for role, path in ((TRAIN_FILE, train), (VAL_FILE, val)):
        h.update(role.encode() + b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()[:HASH_CHARS]


def volume_data_root() -> str:
    """`/data/dpo`: NAMES.data_root as a path inside the volume (it is given as mounted at NAMES.mount)."""
    return "/" + str(PurePosixPath(NAMES.data_root).relative_to(NAMES.mount))


def volume_data_dir(digest: str) -> str:
    return f"{volume_data_root()}/{digest}"


def container_path(path: str) -> str:
    """A volume path (`/data/dpo/x`) as the training container sees it (`/vol/data/dpo/x`); idempotent."""
    p = PurePosixPath(path)
    mount = PurePosixPath(NAMES.mount)
    if p == mount or mount in p.parents:
        return str(p)
    return str(mount / p.relative_to("/")) if p.is_absolute() else str(mount / p)


def files_to_upload(train: Path, val: Path, remote_dir: str, existing: Mapping[str, int]) -> list[tuple[Path, str]]:
    """(local file, volume path) pairs still missing from `remote_dir`, given its listing {name: size}.

    A file of the right name and size is already there: the folder is named by the content hash.
    """
    todo = []
    for name, local in ((TRAIN_FILE, Path(train)), (VAL_FILE, Path(val))):
        if existing.get(name) != local.stat().st_size:
            todo.append((local, f"{remote_dir}/{name}"))
    return todo


def upload_dataset(train: Path, val: Path) -> str:
    """Upload train/val to the volume under `/data/dpo/<hash>/` (skipping files there); return that path.

    The files are checked first (TrainingInputError names file:line), then Modal credentials.
    """
    for path in (train, val):
        load_preference_rows(Path(path))
    require_modal_credentials()
    remote_dir = volume_data_dir(dataset_hash(train, val))
    import modal

    with modal_auth_errors():
        volume = modal.Volume.from_name(NAMES.volume, create_if_missing=True)
        todo = files_to_upload(train, val, remote_dir, _listing(volume, remote_dir))
        if todo:
            with volume.batch_upload(force=True) as batch:
                for local, remote in todo:
                    batch.put_file(local, remote)
    logger.info("dataset at %s:%s (%d file(s) uploaded)", NAMES.volume, remote_dir, len(todo))
    return remote_dir


def _listing(volume, remote_dir: str) -> dict[str, int]:
    import modal.exception

    try:
        entries = volume.listdir(remote_dir)
    except modal.exception.NotFoundError:
        return {}
    return {PurePosixPath(e.path).name: e.size for e in entries}


def volume_adapter_dir(adapter_dir: Path, root: str = NAMES.sft_adapters) -> str:
    """`/vol/adapters/nothing-gpt/<content hash>`: where the adapter lands, as the containers see it."""
    return f"{root}/{adapter_folder_name(adapter_sha256(adapter_dir))}"


def adapter_files(adapter_dir: Path) -> list[Path]:
    """The files of an adapter folder that go to the volume: its config, weights and tokenizer files."""
    return sorted(p for p in Path(adapter_dir).iterdir() if p.is_file() and not p.name.startswith("."))


def upload_adapter(adapter_dir: Path) -> str:
    """Upload the SFT adapter to `/vol/adapters/nothing-gpt/<content hash>/` (skipping files there); return that.

    Checked first with vLLM's load rules (TrainingInputError), then Modal credentials. Training reads it from
    NGPT_SFT_ADAPTER, serving serves it from there: export the path this returns.
    """
    from training.adapters import read_adapter_config
    from training.errors import TrainingInputError

    config = read_adapter_config(Path(adapter_dir), "SFT adapter")
    from infra.lora_rules import lora_problems

    problems = lora_problems(config, None, [p.name for p in Path(adapter_dir).iterdir()])
    if problems:
        raise TrainingInputError(f"SFT adapter {adapter_dir} cannot be served by vLLM: {'; '.join(problems)}.")
    require_modal_credentials()
    container_dir = volume_adapter_dir(Path(adapter_dir))
    remote_dir = "/" + str(PurePosixPath(container_dir).relative_to(NAMES.mount))
    import modal

    with modal_auth_errors():
        volume = modal.Volume.from_name(NAMES.volume, create_if_missing=True)
        existing = _listing(volume, remote_dir)
        todo = [(f, f"{remote_dir}/{f.name}") for f in adapter_files(adapter_dir)
                if existing.get(f.name) != f.stat().st_size]
        if todo:
            # Config last: a folder with an adapter_config.json is complete (readers check for it).
            todo.sort(key=lambda item: item[0].name == ADAPTER_CONFIG)
            with volume.batch_upload(force=True) as batch:
                for local, remote in todo:
                    batch.put_file(local, remote)
    logger.info("adapter at %s:%s (%d file(s) uploaded)", NAMES.volume, remote_dir, len(todo))
    return container_dir
