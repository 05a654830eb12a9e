"""LoRA adapter folders: checks (right base, servable by vLLM), content hash, checkpoint discovery.

No torch import: these run before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from infra.adapter_hash import ADAPTER_CONFIG, WEIGHT_FILES, adapter_folder_name, adapter_sha256
from infra.lora_rules import lora_problems
from training.errors import TrainingInputError

__all__ = ["ADAPTER_CONFIG", "WEIGHT_FILES", "adapter_folder_name", "adapter_sha256"]


def read_adapter_config(adapter_dir: Path, what: str = "adapter") -> dict:
    """adapter_config.json of a LoRA folder that also holds weights, else TrainingInputError."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not adapter_dir.is_dir():
        raise TrainingInputError(f"{what} folder {adapter_dir} does not exist. Train or upload it first.")
    if not config_path.is_file():
        raise TrainingInputError(f"{what} folder {adapter_dir} has no {ADAPTER_CONFIG}: not a PEFT adapter.")
    if not any((adapter_dir / w).is_file() for w in WEIGHT_FILES):
        raise TrainingInputError(f"{what} folder {adapter_dir} has no weights ({' or '.join(WEIGHT_FILES)}).")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise TrainingInputError(f"{config_path}: not valid JSON ({e.msg}).") from e


def same_base(adapter_base: str | None, configured: str) -> bool:
    """Whether an adapter's base_model_name_or_path names the configured base.

    Equal ids, the same local folder, or a local folder named like the hub repo
    (`.../Llama-3.2-3B-Instruct` vs `meta-llama/Llama-3.2-3B-Instruct`) count as the same.
    """
    if not adapter_base:
        return False
    a, b = adapter_base.rstrip("/"), configured.rstrip("/")
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return pa.name.lower() == pb.name.lower()


def servable_problems(adapter_config: dict, max_lora_rank: int) -> list[str]:
    """What would make vLLM refuse this adapter (empty when it can be served): infra.lora_rules, shared with serving."""
    return lora_problems(adapter_config, max_lora_rank)


def check_sft_adapter(adapter_dir: Path, base_model: str, max_lora_rank: int, check_base: bool = True) -> dict:
    """The SFT adapter exists, was made for `base_model`, and the DPO copy of it will be servable."""
    config = read_adapter_config(adapter_dir, "SFT adapter")
    adapter_base = config.get("base_model_name_or_path")
    if check_base and not same_base(adapter_base, base_model):
        raise TrainingInputError(
            f"SFT adapter {adapter_dir} was made for base model {adapter_base!r}, but the run is configured "
            f"with base_model={base_model!r}. Point base_model at the adapter's base (or set "
            "check_base_model=False if they really are the same model)."
        )
    problems = servable_problems(config, max_lora_rank)
    if problems:
        raise TrainingInputError(
            f"SFT adapter {adapter_dir}: the DPO adapter trained from it could not be served: "
            f"{'; '.join(problems)}. Retrain the SFT adapter within these limits or raise the serving limit."
        )
    return config


def check_servable(adapter_dir: Path, max_lora_rank: int) -> None:
    """Raise RuntimeError if vLLM (--max-lora-rank max_lora_rank) would refuse the saved adapter."""
    problems = servable_problems(read_adapter_config(adapter_dir, "DPO adapter"), max_lora_rank)
    if problems:
        raise RuntimeError(f"saved adapter {adapter_dir} cannot be served by vLLM: {'; '.join(problems)}.")


