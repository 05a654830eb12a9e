"""The pipeline's steps, one per module (named after its stage), re-exported here.

Re-exported lazily (PEP 562): `import steps.names` or `steps.records` stays free of ZenML, so the CLI
and the tests can use the names before ZenML's home is set; `from steps import judge_preferences`
imports ZenML (and the materializers) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_STEPS = {
    "select_prompts": "steps.prompts",
    "generate_completions": "steps.generate",
    "judge_preferences": "steps.judge",
    "split_dataset": "steps.split",
    "merge_preferences": "steps.split",
    "add_arena_pairs": "steps.split",
    "upload_dataset": "steps.upload",
    "train_adapter": "steps.train",
    "deploy_adapters": "steps.deploy",
    "evaluate_adapters": "steps.evaluate",
    "evaluate_vs_previous": "steps.evaluate",
    "promote_or_rollback": "steps.evaluate",
}

__all__ = sorted(_STEPS)


def __getattr__(name: str) -> Any:
    module = _STEPS.get(name)
    if module is None:
        raise AttributeError(f"module 'steps' has no attribute {name!r}")
    importlib.import_module("steps.materializers")  # registers the materializers before any step runs
    return getattr(importlib.import_module(module), name)
