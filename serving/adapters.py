"""LoRA adapter folders: can vLLM load this one, and which files (by content hash) does it hold.

Shared by the vLLM command builder (runs inside the Modal container), the Modal-side adapter
description and the local server, so all three judge an adapter folder the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from infra.adapter_hash import ADAPTER_CONFIG, adapter_sha256

# The ranks vLLM accepts for --max-lora-rank (vLLM 0.33 LoRAConfig).
VALID_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_problem(path: str | Path, *, max_lora_rank: int | None = None) -> str | None:
    """Why vLLM would not load the adapter folder at `path`, or None when it looks loadable.

    Checks what vLLM checks at load (NOTES.md): the folder and its adapter_config.json exist,
    rank <= max_lora_rank, bias "none", no DoRA, no modules_to_save.
    """
    folder = Path(path)
    if not folder.is_dir():
        return f"no adapter folder at {folder}"
    config_file = folder / ADAPTER_CONFIG
    if not config_file.is_file():
        return f"{folder} has no {ADAPTER_CONFIG}"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        return f"{config_file} is not readable JSON: {e}"
    rank = config.get("r")
    if max_lora_rank is not None and isinstance(rank, int) and rank > max_lora_rank:
        return f"rank {rank} > --max-lora-rank {max_lora_rank} (raise max_lora_rank or retrain)"
    if config.get("bias", "none") != "none":
        return f"bias={config.get('bias')!r}; vLLM loads only bias='none' adapters"
    if config.get("use_dora"):
        return "DoRA adapters are not supported by vLLM"
    if config.get("modules_to_save"):
        return f"modules_to_save={config['modules_to_save']!r}; vLLM rejects adapters that save full modules"
    return None


def hash_adapter_dir(path: str | Path) -> str:
    """'sha256:<hex>' of the adapter's config and weights: the same hash training records (infra.adapter_hash)."""
    return "sha256:" + adapter_sha256(path)


def describe_adapter(path: str | Path, *, max_lora_rank: int | None = None) -> dict:
    """A JSON-ready description: path, problem (None when loadable), rank, and sha256 when loadable."""
    problem = adapter_problem(path, max_lora_rank=max_lora_rank)
    info: dict = {"path": str(path), "problem": problem, "rank": None, "sha256": None}
    if problem is None:
        info["rank"] = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("r")
        info["sha256"] = hash_adapter_dir(path)
    return info
