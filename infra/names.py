"""Names shared by the Modal apps and the steps that call them: one place, defaults from the plan.

Plain constants (no Modal import) so the CLI and tests can read them without the Modal client.
Override any of them with the environment variable named beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class ModalNames:
    """Every Modal-side name the project uses."""

    train_app: str = field(default_factory=lambda: _env("NGPT_TRAIN_APP", "nothing-gpt-dpo-train"))
    serve_app: str = field(default_factory=lambda: _env("NGPT_SERVE_APP", "nothing-gpt-serve"))
    volume: str = field(default_factory=lambda: _env("NGPT_VOLUME", "nothing-gpt-vol"))
    hf_cache_volume: str = field(default_factory=lambda: _env("NGPT_HF_CACHE_VOLUME", "nothing-gpt-hf-cache"))
    hf_secret: str = field(default_factory=lambda: _env("NGPT_HF_SECRET", "huggingface-secret"))
    # "" (NGPT_WANDB_SECRET=) means: train without W&B and mount no W&B secret.
    wandb_secret: str = field(default_factory=lambda: _env("NGPT_WANDB_SECRET", "wandb-secret"))
    gpu: str = field(default_factory=lambda: _env("NGPT_GPU", "L4"))
    base_model: str = field(
        default_factory=lambda: _env("NGPT_BASE_MODEL", "meta-llama/Llama-3.2-3B-Instruct")
    )
    # Paths inside the volume as mounted at /vol.
    mount: str = "/vol"
    sft_adapter: str = "/vol/adapters/nothing-gpt"
    dpo_adapter: str = "/vol/adapters/nothing-gpt-dpo"
    checkpoints: str = "/vol/checkpoints/dpo-r32"
    data_root: str = "/vol/data/dpo"
    # Names the served adapters are requested by.
    sft_model_name: str = "seinfeld"
    dpo_model_name: str = "seinfeld-dpo"


NAMES = ModalNames()
