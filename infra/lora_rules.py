"""vLLM's load rules for a LoRA adapter (vLLM 0.33): the one check training and serving both apply.

vLLM refuses to start when one `--lora-modules` adapter fails to load, so every adapter is judged by these
rules before it is trained from, saved, or deployed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from infra.adapter_hash import WEIGHT_FILES

# init_lora_weights values that change the base weights at initialisation (PiSSA, OLoRA, LoftQ, CorDA, EVA):
# such an adapter only works on that modified base, and vLLM serves the original one.
BASE_CHANGING_INITS = ("pissa", "olora", "loftq", "corda", "eva")


def lora_problems(
    config: Mapping[str, Any], max_lora_rank: int | None, files: Iterable[str] | None = None
) -> list[str]:
    """What would make vLLM refuse (or wrongly serve) an adapter with this adapter_config.json; [] when none.

    `files`: the names in the adapter folder, when known (a weights file must be there).
    """
    problems = []
    if files is not None and not set(WEIGHT_FILES) & set(files):
        problems.append(f"no weights file ({' or '.join(WEIGHT_FILES)})")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    ranks = [r for r in ranks if isinstance(r, int)]
    if max_lora_rank is not None and ranks and max(ranks) > max_lora_rank:
        problems.append(f"rank {max(ranks)} exceeds the serving limit --max-lora-rank {max_lora_rank} "
                        "(raise max_lora_rank or retrain)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r} (vLLM loads only bias='none' adapters)")
    if config.get("use_dora"):
        problems.append("DoRA is used (use_dora=True); vLLM refuses it")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save is set ({config['modules_to_save']}); vLLM refuses adapters that save "
                        "full modules")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        problems.append(f"init_lora_weights={init!r} changes the base weights; vLLM serves the original base")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(f"peft_type is {peft_type!r}; vLLM serves LoRA only")
    return problems
