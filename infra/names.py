"""Names shared by the Modal apps and the steps that call them: one place, defaults from the plan.

Plain constants (no Modal import) so the CLI and tests can read them without the Modal client.
Override any of them with the environment variable named in `ENV_VARS`.

A Modal container imports the app module again, and this module with it: it must resolve the same names
as the machine that deployed the app, or it mounts other secrets (Modal then refuses to start it: "Function
has N dependencies but container got M") and trains another base. Every app therefore passes
`NAMES.env()` (what this side resolved, as NGPT_* variables) into its image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

# Field -> (environment variable, default). Every name read from the environment is listed here, so
# `ModalNames.env()` hands a container all of them.
ENV_VARS: dict[str, tuple[str, str]] = {
    "train_app": ("NGPT_TRAIN_APP", "nothing-gpt-dpo-train"),
    "serve_app": ("NGPT_SERVE_APP", "nothing-gpt-serve"),
    "volume": ("NGPT_VOLUME", "nothing-gpt-vol"),
    "hf_cache_volume": ("NGPT_HF_CACHE_VOLUME", "nothing-gpt-hf-cache"),
    "hf_secret": ("NGPT_HF_SECRET", "huggingface-secret"),
    # "" (NGPT_WANDB_SECRET=) means: train without W&B and mount no W&B secret.
    "wandb_secret": ("NGPT_WANDB_SECRET", "wandb-secret"),
    # Holds SERVE_API_KEY, the bearer key vLLM on Modal requires (the clients send the same variable).
    "serve_key_secret": ("NGPT_SERVE_KEY_SECRET", "nothing-gpt-serve-key"),
    "gpu": ("NGPT_GPU", "L4"),
    "base_model": ("NGPT_BASE_MODEL", "meta-llama/Llama-3.2-3B-Instruct"),
    # The adapter folders to train from and to serve, each a content-addressed folder on the volume
    # (/vol/adapters/<name>/<hash>); `upload --adapter` and training print them. "" = none chosen yet.
    "sft_adapter": ("NGPT_SFT_ADAPTER", ""),
    "dpo_adapter": ("NGPT_DPO_ADAPTER", ""),
    # What the serving app serves, set by the deploy: JSON {served name: folder}, SFT included. "" = the two
    # variables above (SFT and DPO), as for a `modal deploy -m serving.modal_app` by hand.
    "served": ("NGPT_SERVED_ADAPTERS", ""),
}


def _env(name: str) -> Callable[[], str]:
    var, default = ENV_VARS[name]
    return lambda: os.environ.get(var, default)


@dataclass(frozen=True)
class ModalNames:
    """Every Modal-side name the project uses."""

    train_app: str = field(default_factory=_env("train_app"))
    serve_app: str = field(default_factory=_env("serve_app"))
    volume: str = field(default_factory=_env("volume"))
    hf_cache_volume: str = field(default_factory=_env("hf_cache_volume"))
    hf_secret: str = field(default_factory=_env("hf_secret"))
    wandb_secret: str = field(default_factory=_env("wandb_secret"))
    serve_key_secret: str = field(default_factory=_env("serve_key_secret"))
    gpu: str = field(default_factory=_env("gpu"))
    base_model: str = field(default_factory=_env("base_model"))
    sft_adapter: str = field(default_factory=_env("sft_adapter"))
    dpo_adapter: str = field(default_factory=_env("dpo_adapter"))
    served: str = field(default_factory=_env("served"))
    # Paths inside the volume as mounted at /vol.
    mount: str = "/vol"
    sft_adapters: str = "/vol/adapters/nothing-gpt"  # one folder per SFT adapter content hash below it
    dpo_adapters: str = "/vol/adapters/nothing-gpt-dpo"  # one folder per DPO adapter content hash below it
    checkpoints: str = "/vol/checkpoints/dpo"  # one folder per run fingerprint below it
    data_root: str = "/vol/data/dpo"
    # Modal Dict: run fingerprint -> the function call training it (a second launch attaches to it).
    runs_dict: str = "nothing-gpt-dpo-runs"
    # Names the served adapters are requested by.
    sft_model_name: str = "seinfeld"
    dpo_model_name: str = "seinfeld-dpo"
    # Rounds (`run --rounds K`): the previous round's DPO adapter, served beside the new one for their A/B.
    prev_model_name: str = "seinfeld-dpo-prev"

    def served_folders(self) -> dict[str, str]:
        """Served name -> its folder on the volume, as the serving app loads them (serving/modal_app.py `ADAPTERS`):
        the deploy's NGPT_SERVED_ADAPTERS, else NGPT_SFT_ADAPTER and NGPT_DPO_ADAPTER. "" = not chosen, not served."""
        if self.served:
            import json

            return {str(k): str(v) for k, v in json.loads(self.served).items()}
        return {self.sft_model_name: self.sft_adapter, self.dpo_model_name: self.dpo_adapter}

    def env(self) -> dict[str, str]:
        """Every name read from the environment, as the NGPT_* variables that resolve to it here.

        Put this into a Modal image (`image.env(NAMES.env())`): the container then resolves exactly these.
        """
        return {var: getattr(self, name) for name, (var, _) in ENV_VARS.items()}


NAMES = ModalNames()
