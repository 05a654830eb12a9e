"""`DPOTrainConfig`: every setting of a DPO run, with the plan's values as defaults.

Plain dataclass (no torch import) so the CLI, the Modal app and the ZenML step can build and validate it
cheaply. Each field has a `help` text; `__post_init__` rejects bad values with the rule, the value received
and the fix. `DPOTrainConfig.cpu_test(...)` gives the settings for a tiny CPU run with the same code path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.errors import ConfigError  # the one base error; the training container mounts infra/
from infra.names import NAMES

# vLLM 0.33 accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Loss types of TRL 1.16's DPOTrainer.
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
REPORT_TO = ("auto", "wandb", "none")
TRAIN_FILE, VAL_FILE = "train.jsonl", "val.jsonl"
RESTART_LABEL = re.compile(r"[A-Za-z0-9._-]{0,40}")




# The value kinds `check_types` checks, as a reader of the message calls them.
KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null"}


def check_types(cls: type, values: Mapping[str, Any], where: str = "") -> None:
    """Raise ConfigError naming the first key of `values` whose value is not of the kind `cls` declares for it.

    A YAML file or a `--set` flag can hand `"fast"` to a number; without this check it fails far away as
    "'<' not supported" with no key named. Checked: text, whole numbers, numbers, true/false, each optionally null
    (a whole number is a number; a path object is text). Other annotations (a nested dataclass, a mapping) are left
    to the class's own checks. `where` prefixes the key (e.g. "generate."). It lives here, not in engine/ or a
    pipeline module, because the training container mounts only training/ and infra/, and DPOTrainConfig uses it.
    """
    declared = declared_kinds(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in values.items():
        kinds = declared.get(key)
        if kinds is None or _fits(value, kinds):
            continue
        wanted = " or ".join(KIND_NAMES[k] for k in kinds)
        message = f"{where}{key} must be {wanted}, got {value!r} ({_kind_of(value)})"
        if isinstance(value, str) and float in kinds and _as_number(value) is not None:
            message += (f"; YAML reads {value} as text (a float needs a dot): write {_as_number(value)}")
        elif defaults.get(key, dataclasses.MISSING) is not dataclasses.MISSING:
            message += f"; e.g. {_shown(defaults[key])} (the default)"
        raise ConfigError(message)


@functools.cache
def declared_kinds(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's kinds when its annotation is one of KIND_NAMES or a union of them."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        kinds = typing.get_args(hint) if union else (hint,)
        if all(k in KIND_NAMES for k in kinds):
            out[name] = kinds
    return out


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # before int: True is an int to Python, not to a reader
        return bool in kinds
    if value is None:
        return type(None) in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    return isinstance(value, str | os.PathLike) and str in kinds


def _kind_of(value: Any) -> str:
    return next((name for kind, name in KIND_NAMES.items() if isinstance(value, kind)), type(value).__name__)


def _shown(value: Any) -> str:
    """A default as YAML and JSON write it."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _as_number(text: str) -> str | None:
    """`1e-5` as YAML 1.1 reads a float (`1.0e-05`), or None when the text is no number."""
    try:
        number = repr(float(text))
    except ValueError:
        return None
    mantissa, e, exponent = number.partition("e")
    return f"{mantissa}{'' if '.' in mantissa else '.0'}{e}{exponent}"


def _f(default: Any, help: str) -> Any:  # noqa: A002 - `help` mirrors TRL's field metadata key
    return field(default=default, metadata={"help": help})


@dataclass
class DPOTrainConfig:
    """Settings of one DPO run (defaults: the plan, QLoRA on a CUDA GPU)."""

    # Inputs and outputs
    data_dir: str = _f(NAMES.data_root, f"folder holding {TRAIN_FILE} (training) and {VAL_FILE} (evaluation)")
    base_model: str = _f(NAMES.base_model, "base model: hub id or local model folder")
    sft_adapter: str = _f(
        NAMES.sft_adapter, "folder of the SFT LoRA adapter; DPO starts from it ('' until NGPT_SFT_ADAPTER is set)"
    )
    output_dir: str = _f(
        NAMES.checkpoints,
        "root of the checkpoint folders: a run trains in <output_dir>/<run id> (a hash of its data, SFT adapter "
        "and settings), so a retry or rerun of the same run resumes there and another run starts clean",
    )
    adapter_out: str = _f(
        NAMES.dpo_adapters,
        "root of the saved adapters: each lands with its metrics in <adapter_out>/<content hash>, never "
        "over another one",
    )
    init_adapter: str = _f(
        "", "a DPO adapter folder the policy starts from instead of the SFT adapter (a later round: the last "
        "round's adapter); the reference stays the SFT adapter. '' = start from the SFT adapter",
    )
    # DPO
    beta: float = _f(0.1, "DPO beta: how far the policy may move from the reference")
    loss_type: str = _f("sigmoid", f"DPO loss, one of {', '.join(DPO_LOSS_TYPES)}; several joined by '+' are "
                        "summed (TRL's list of losses), e.g. 'sigmoid+sft' adds an NLL term on the chosen answers "
                        "(RPO-style)")
    label_smoothing: float = _f(0.0, "the share of pairs assumed mislabelled by the judge (loss 'robust', or "
                                "'sigmoid' as cDPO); 0 trusts every pair")
    ld_alpha: float | None = _f(None, "length-desensitised DPO: the weight of tokens beyond the shorter answer's "
                                "length, in [0, 1] (1: plain DPO); None: off")
    learning_rate: float = _f(5e-6, "peak learning rate")
    num_train_epochs: float = _f(1.0, "passes over the training set (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "stop after this many optimizer steps; -1 runs num_train_epochs")
    per_device_train_batch_size: int = _f(4, "preference pairs per device per forward pass (training)")
    per_device_eval_batch_size: int = _f(2, "preference pairs per device per forward pass (evaluation)")
    gradient_accumulation_steps: int = _f(4, "forward passes per optimizer step")
    max_length: int = _f(2048, "tokens per prompt+completion sequence; longer ones are truncated")
    lr_scheduler_type: str = _f("cosine", "learning-rate schedule (transformers SchedulerType name)")
    warmup_steps: int = _f(20, "linear warm-up steps")
    logging_steps: int = _f(10, "log metrics every N steps")
    eval_steps: int = _f(25, "evaluate on the validation set every N steps")
    save_steps: int = _f(25, "save a resumable checkpoint every N steps")
    save_total_limit: int | None = _f(3, "keep at most N checkpoints (None keeps all)")
    seed: int = _f(42, "random seed")
    # Hardware
    bf16: bool = _f(True, "bf16 mixed precision (GPU, or CPU autocast); required by load_in_4bit")
    load_in_4bit: bool = _f(
        True, "QLoRA: load the base in 4-bit NF4 with bf16 compute (bitsandbytes; CUDA or CPU alike)"
    )
    gradient_checkpointing: bool = _f(True, "recompute activations in the backward pass to save memory")
    use_cpu: bool = _f(False, "train on the CPU (tiny models and tests only)")
    # Checks and reporting
    max_lora_rank: int = _f(32, "the serving limit (vLLM --max-lora-rank); a larger adapter rank is refused")
    check_base_model: bool = _f(True, "refuse an SFT adapter whose adapter_config.json names another base")
    restart: str = _f(
        "", "'' continues this run from its newest checkpoint; a label (e.g. a date) starts it over in a folder "
        "of its own, which its retries resume. Nothing is deleted",
    )
    report_to: str = _f("auto", "auto: W&B when WANDB_API_KEY is set, else none; or wandb; or none")
    wandb_project: str = _f("nothing-gpt-dpo", "W&B project name")
    run_name: str | None = _f(None, "run name shown in W&B (default: generated)")
    disable_tqdm: bool = _f(False, "hide the progress bar")

    def __post_init__(self) -> None:
        check_types(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        positive = {
            "beta": self.beta,
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "per_device_eval_batch_size": self.per_device_eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "logging_steps": self.logging_steps,
            "eval_steps": self.eval_steps,
            "save_steps": self.save_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0; got {value!r}. Set a positive value.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(
                f"max_steps must be a positive step count or -1 (run num_train_epochs); got {self.max_steps}."
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0; got {self.warmup_steps}.")
        if self.max_length < 32:
            raise ConfigError(
                f"max_length must be >= 32 tokens to hold a prompt and a completion; got {self.max_length}."
            )
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be >= 1 or None (keep all); got {self.save_total_limit}.")
        unknown = [t for t in self.loss_types if t not in DPO_LOSS_TYPES]
        if unknown or not self.loss_types:
            raise ConfigError(
                f"loss_type must be one of {', '.join(DPO_LOSS_TYPES)}, or several joined by '+' (e.g. "
                f"'sigmoid+sft'); got {self.loss_type!r}."
            )
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5) (the share of flipped pairs); got "
                              f"{self.label_smoothing}; try 0.1 with loss_type 'robust'.")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ConfigError(f"ld_alpha must be in [0, 1] or None (off); got {self.ld_alpha}; try 0.5.")
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ConfigError(
                f"max_lora_rank must be a value vLLM accepts for --max-lora-rank {VLLM_LORA_RANKS}; "
                f"got {self.max_lora_rank}."
            )
        if self.report_to not in REPORT_TO:
            raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}; got {self.report_to!r}.")
        if self.load_in_4bit and not self.bf16:
            raise ConfigError(
                "load_in_4bit (QLoRA) computes in bf16, so it needs bf16=True; got load_in_4bit=True with "
                "bf16=False. Set bf16=True, or load_in_4bit=False too for an fp32 debugging run."
            )
        if not RESTART_LABEL.fullmatch(self.restart):
            raise ConfigError(
                f"restart must be '' or a label of letters, digits, '.', '_', '-' (at most 40); got {self.restart!r}."
            )
        for name in ("data_dir", "base_model", "output_dir", "adapter_out"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{name} must name a path; got an empty string.")
        if self.init_adapter and Path(self.init_adapter).resolve() == Path(self.sft_adapter).resolve():
            raise ConfigError(
                f"init_adapter is the SFT adapter {self.init_adapter!r}; a run starts from the SFT adapter anyway. "
                "Leave init_adapter '' or name an earlier DPO adapter."
            )
        if Path(self.adapter_out).resolve() == Path(self.sft_adapter).resolve():
            raise ConfigError(
                f"adapter_out must differ from sft_adapter, or the SFT adapter is overwritten; both are "
                f"{self.adapter_out!r}. Choose another adapter_out."
            )

    def require_sft_adapter(self) -> None:
        """Raise ConfigError when no SFT adapter is chosen ('' until NGPT_SFT_ADAPTER is exported)."""
        if not str(self.sft_adapter).strip():
            raise ConfigError(
                "sft_adapter is not set. Put the SFT adapter on the volume with `python -m pipelines.dpo upload "
                "--adapter DIR` and export the NGPT_SFT_ADAPTER=<path> it prints (or pass --sft-adapter)."
            )

    # Derived values

    @property
    def train_path(self) -> Path:
        return Path(self.data_dir) / TRAIN_FILE

    @property
    def val_path(self) -> Path:
        return Path(self.data_dir) / VAL_FILE

    def resolved_report_to(self) -> str:
        """`wandb` or `none`: auto picks W&B only when WANDB_API_KEY is set (never a login prompt)."""
        if self.report_to == "auto":
            return "wandb" if os.environ.get("WANDB_API_KEY") else "none"
        return self.report_to

    # Construction

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None, **base: Any) -> DPOTrainConfig:
        """Defaults, then `base`, then `overrides`; unknown keys are rejected with the list of valid ones."""
        merged = {**base, **(overrides or {})}
        unknown = sorted(set(merged) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown DPOTrainConfig setting(s) {unknown}; valid settings: {', '.join(cls.field_names())}."
            )
        return cls(**merged)

    @classmethod
    def cpu_test(cls, *, fp32: bool = False, **overrides: Any) -> DPOTrainConfig:
        """A tiny CPU run on the L4 run's code path: the 4-bit NF4 base with bf16 compute (QLoRA), a couple of
        steps, frequent logs and saves. `fp32=True` loads the base unquantized in fp32: for debugging only."""
        settings: dict[str, Any] = {
            "use_cpu": True,
            "bf16": not fp32,
            "load_in_4bit": not fp32,
            "gradient_checkpointing": False,  # nothing to save at this size
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_length": 512,
            "learning_rate": 1e-3,  # gradients are tiny on a random 128-wide model: move the weights visibly
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "logging_steps": 1,
            "eval_steps": 2,
            "save_steps": 2,
            "report_to": "none",
            "disable_tqdm": True,
        }
        return cls.from_overrides(overrides, **settings)

    @property
    def loss_types(self) -> list[str]:
        """`loss_type` as TRL's list: 'sigmoid+sft' -> ['sigmoid', 'sft']."""
        return [t.strip() for t in str(self.loss_type).split("+") if t.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def help_text(self) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(self)}
