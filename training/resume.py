"""Resuming a preempted run: find the newest complete checkpoint, and refuse checkpoints of another run.

`output_dir/run.json` records a fingerprint of what a run trains on (data, base, SFT adapter, DPO settings).
A rerun with the same fingerprint continues from the newest `checkpoint-N`; one with another fingerprint would
silently continue someone else's optimizer state, so it is refused before the model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from training.adapters import adapter_sha256
from training.config import DPOTrainConfig
from training.errors import TrainingInputError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Settings that change what the optimizer state means. Step counts, logging and saving may change on resume.
_FINGERPRINT_FIELDS = (
    "base_model", "beta", "loss_type", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "lr_scheduler_type", "warmup_steps", "seed", "load_in_4bit",
)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint-N folder (trainer_state.json is written last), or None."""
    complete = [(step, path) for step, path in _checkpoints_by_step(Path(output_dir))
                if (path / "trainer_state.json").is_file()]
    return max(complete)[1] if complete else None


def _checkpoints(output_dir: Path) -> list[Path]:
    return [path for _, path in _checkpoints_by_step(output_dir)]


def _checkpoints_by_step(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    matches = ((_CHECKPOINT.match(child.name), child) for child in output_dir.iterdir() if child.is_dir())
    return [(int(m.group(1)), child) for m, child in matches if m]


def run_fingerprint(config: DPOTrainConfig) -> dict[str, str]:
    """What identifies a run: hashes of the data files and SFT adapter, plus the DPO settings."""
    settings = {name: getattr(config, name) for name in _FINGERPRINT_FIELDS}
    return {
        "train_sha256": _file_sha256(config.train_path),
        "val_sha256": _file_sha256(config.val_path),
        "sft_adapter_sha256": adapter_sha256(Path(config.sft_adapter)),
        "settings_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
    }


def checkpoint_to_resume(config: DPOTrainConfig) -> Path | None:
    """The checkpoint this run continues from (None: start fresh), and record this run's fingerprint.

    Raises TrainingInputError when output_dir holds checkpoints of a run with another fingerprint.
    """
    output_dir = Path(config.output_dir)
    fingerprint = run_fingerprint(config)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    run_file = output_dir / RUN_FILE
    if checkpoint is not None and run_file.is_file():
        recorded = json.loads(run_file.read_text())
        changed = sorted(k for k in fingerprint if recorded.get(k) != fingerprint[k])
        if changed:
            raise TrainingInputError(
                f"{output_dir} holds checkpoints of another run ({', '.join(changed)} differ), so resuming "
                f"from {checkpoint.name} would continue that run. Use a new output_dir, delete the old "
                "checkpoints, or set resume=False to start over."
            )
    if not config.resume:
        for old in _checkpoints(output_dir):  # starting over: old checkpoints must not be resumed later
            logger.info("resume=False: removing old checkpoint %s", old)
            shutil.rmtree(old)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    return checkpoint


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
