"""One checkpoint folder per run: `<output_dir>/<run id>/`, where the run id hashes what the run trains on.

A run is its data, base, SFT adapter and DPO settings (`run_fingerprint`). The same run (a Modal retry, a
preempted attempt, a rerun of the pipeline) finds its own folder and continues from the newest complete
`checkpoint-N`; a different run (new data, another beta) gets a folder of its own and starts clean. Nothing is
ever deleted: to start the same run over, give it a `restart` label, which is part of the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from infra.atomic import write_json
from training.adapters import adapter_sha256
from training.config import DPOTrainConfig
from training.errors import TrainingInputError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_ID_CHARS = 16  # 64 bits, as the dataset folders: enough to tell runs apart, short enough to read
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Settings that change what the optimizer state means. Step counts, logging and saving may change on resume.
_FINGERPRINT_FIELDS = (
    "base_model", "beta", "loss_type", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "lr_scheduler_type", "warmup_steps", "seed", "load_in_4bit",
    "restart",
)


_LOSS_FIELDS = {"label_smoothing": 0.0, "ld_alpha": None}  # loss settings added later, and their "off" values


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint-N folder (trainer_state.json is written last), or None."""
    complete = [(step, path) for step, path in _checkpoints_by_step(Path(output_dir))
                if (path / "trainer_state.json").is_file()]
    return max(complete)[1] if complete else None


def _checkpoints_by_step(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    matches = ((_CHECKPOINT.match(child.name), child) for child in output_dir.iterdir() if child.is_dir())
    return [(int(m.group(1)), child) for m, child in matches if m]


def run_fingerprint(config: DPOTrainConfig) -> dict[str, str]:
    """What identifies a run: hashes of the data files, the SFT adapter (and the adapter it starts from, when
    not the SFT one), plus the DPO settings."""
    settings = {name: getattr(config, name) for name in _FINGERPRINT_FIELDS}
    for name, off in _LOSS_FIELDS.items():  # in the fingerprint only when set: older runs keep their ids
        if getattr(config, name) != off:
            settings[name] = getattr(config, name)
    fingerprint = {
        "train_sha256": _file_sha256(config.train_path),
        "val_sha256": _file_sha256(config.val_path),
        "sft_adapter_sha256": adapter_sha256(Path(config.sft_adapter)),
        "settings_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
    }
    if config.init_adapter:  # a later round: the policy starts from another adapter, so it is another run
        fingerprint["init_adapter_sha256"] = adapter_sha256(Path(config.init_adapter))
    return fingerprint


def run_id(fingerprint: dict[str, str]) -> str:
    """The run's folder name: a short hash of its fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:RUN_ID_CHARS]


def run_dir(config: DPOTrainConfig, fingerprint: dict[str, str] | None = None) -> Path:
    """`<output_dir>/<run id>`: where this run's checkpoints live."""
    return Path(config.output_dir) / run_id(fingerprint or run_fingerprint(config))


def checkpoint_to_resume(config: DPOTrainConfig) -> tuple[Path, Path | None]:
    """This run's checkpoint folder (created, its fingerprint recorded) and the checkpoint to continue from.

    Raises TrainingInputError when the folder records another fingerprint (a hash prefix collision, or files
    changed by hand): continuing would mix two runs' optimizer states.
    """
    fingerprint = run_fingerprint(config)
    folder = run_dir(config, fingerprint)
    run_file = folder / RUN_FILE
    if run_file.is_file():
        recorded = json.loads(run_file.read_text())
        changed = sorted(k for k in fingerprint if recorded.get(k) != fingerprint[k])
        if changed:
            raise TrainingInputError(
                f"{folder} records another run ({', '.join(changed)} differ), so resuming there would continue "
                "that run. Move that folder aside, or set restart=<label> to train in a new folder."
            )
    checkpoint = latest_checkpoint(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(run_file, fingerprint)
    logger.info("run %s: %s", folder.name, f"resuming from {checkpoint.name}" if checkpoint else "starting")
    return folder, checkpoint


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
