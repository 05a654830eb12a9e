"""LoRA adapter folders: can vLLM load this one, and which files (by content hash) does it hold.

Shared by the vLLM command builder (runs inside the Modal container), the Modal-side adapter
description and the local server, so all three judge an adapter folder the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from infra.adapter_hash import ADAPTER_CONFIG, adapter_sha256
from infra.lora_rules import lora_problems

# The ranks vLLM accepts for --max-lora-rank (vLLM 0.33 LoRAConfig).
VALID_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_problem(path: str | Path, *, max_lora_rank: int | None = None) -> str | None:
    """Why vLLM would not load the adapter folder at `path` (on this disk), or None when it looks loadable."""
    folder = Path(path)
    if not folder.is_dir():
        return f"no adapter folder at {folder}"
    config_file = folder / ADAPTER_CONFIG
    config = config_file.read_bytes() if config_file.is_file() else None
    return adapter_config_problem(folder, config, [p.name for p in folder.iterdir()], max_lora_rank=max_lora_rank)


def adapter_config_problem(path: str | Path, config: bytes | None, files: Iterable[str] | None, *,
                           max_lora_rank: int | None = None) -> str | None:
    """vLLM's load rules (infra.lora_rules) for an adapter folder known by its file names and config bytes.

    Used for folders on this disk and on the Modal volume alike; `files` None: no such folder. None when it
    looks loadable.
    """
    if files is None:
        return f"no adapter folder at {path}"
    if config is None:
        return f"{path} has no {ADAPTER_CONFIG}"
    try:
        parsed = json.loads(config)
    except ValueError as e:
        return f"{path}/{ADAPTER_CONFIG} is not readable JSON: {e}"
    problems = lora_problems(parsed, max_lora_rank, files)
    return f"{path}: {'; '.join(problems)}" if problems else None


# PEFT's module names in a Llama-family layer -> the packed module vLLM wraps for them.
PACKED_MODULES = {
    "q_proj": "self_attn.qkv_proj",
    "k_proj": "self_attn.qkv_proj",
    "v_proj": "self_attn.qkv_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_up_proj",
    "up_proj": "mlp.gate_up_proj",
    "down_proj": "mlp.down_proj",
}


def lora_rank_for(ranks: Iterable[int]) -> int:
    """The smallest rank vLLM accepts that holds every adapter's rank (its LoRA buffers are sized by it)."""
    largest = max(ranks, default=1)
    for rank in VALID_LORA_RANKS:
        if rank >= largest:
            return rank
    raise ValueError(f"adapter rank {largest} is above vLLM's largest ({VALID_LORA_RANKS[-1]})")


def lora_target_modules(adapter_dirs: Iterable[str | Path], num_layers: int | None) -> tuple[str, ...] | None:
    """Exactly the modules the adapters train, as vLLM's full packed names (model.layers.<i>.self_attn.qkv_proj):
    vLLM then wraps only those (on the CPU it copies every wrapped module's adapter matrices per token). None (wrap
    everything) where an adapter's modules cannot be named that way: a regex or "all-linear", a module outside
    a Llama layer's seven, another layers pattern, or an unknown layer count. Never a list that misses a module:
    vLLM would ignore its weights without a word."""
    names: set[str] = set()
    for folder in adapter_dirs:
        config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
        modules = config.get("target_modules")
        if not isinstance(modules, list) or not modules or not set(modules) <= set(PACKED_MODULES):
            return None
        if config.get("layers_pattern") not in (None, "layers", ["layers"]):
            return None
        layers = config.get("layers_to_transform")
        if layers is None:
            if num_layers is None:
                return None
            layers = range(num_layers)
        elif isinstance(layers, int):
            layers = [layers]
        names.update(f"model.layers.{layer}.{PACKED_MODULES[module]}" for layer in layers for module in modules)
    return tuple(sorted(names)) or None


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
