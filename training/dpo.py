"""`train_dpo`: DPO on top of the SFT LoRA adapter with one base model and two adapters.

The base is loaded once (4-bit NF4 with bf16 compute on CUDA; fp32 on CPU). The SFT adapter is loaded
trainable under PEFT's default name `default` (the policy) and given to TRL's DPOTrainer without a
`ref_model`: TRL 1.16 then adds a frozen adapter `ref`, a copy of `default`, and computes the reference
log-probs with `ref` active. One base, two adapters, no second model copy. Only `default` is saved.

All inputs are checked (data files, SFT adapter, its base, servability) before the model is loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.adapters import (
    ADAPTER_CONFIG,
    adapter_folder_name,
    adapter_sha256,
    check_servable,
    check_sft_adapter,
)
from training.config import DPOTrainConfig
from training.data import RowFormat, load_preference_rows
from training.errors import TrainingInputError
from training.resume import checkpoint_to_resume

logger = logging.getLogger(__name__)

POLICY_ADAPTER = "default"  # the only trainable name TRL 1.16 accepts; `ref` is the frozen copy it adds
REF_ADAPTER = "ref"
METRICS_FILE = "training_metrics.json"
FINISHED_FILE = "finished.json"  # in the run's checkpoint folder: the plan it finished and the adapter it saved
# Keys of the final metrics: the last training log and the final evaluation.
_TRAIN_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")

ProgressHook = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    adapter_dir: Path  # the saved policy adapter, servable by vLLM
    metrics: dict[str, Any]  # also written to metrics_path
    metrics_path: Path
    adapter_sha256: str  # content hash of adapter_config.json + weights
    steps: int  # optimizer steps in total (including those before a resume)
    checkpoint_dir: Path  # this run's checkpoint folder, <output_dir>/<run id>


@dataclass(frozen=True)
class _Inputs:
    train_rows: list[dict]
    val_rows: list[dict]
    row_format: RowFormat


def check_inputs(config: DPOTrainConfig) -> _Inputs:
    """Every check that needs no model: data files, SFT adapter (exists, base, servable), W&B choice."""
    config.require_sft_adapter()
    train_rows, train_format = load_preference_rows(config.train_path)
    val_rows, val_format = load_preference_rows(config.val_path)
    if train_format != val_format:
        raise TrainingInputError(
            f"{config.train_path} is {train_format} but {config.val_path} is {val_format}; use one format."
        )
    check_sft_adapter(Path(config.sft_adapter), config.base_model, config.max_lora_rank, config.check_base_model)
    if config.init_adapter:  # the same rules: it becomes the policy, and vLLM must still serve what it turns into
        check_sft_adapter(Path(config.init_adapter), config.base_model, config.max_lora_rank, config.check_base_model)
    if config.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        raise TrainingInputError(
            "report_to='wandb' but WANDB_API_KEY is not set (a login prompt would block the run). "
            "Set WANDB_API_KEY or use report_to='auto' or 'none'."
        )
    return _Inputs(train_rows, val_rows, train_format)


def train_dpo(
    config: DPOTrainConfig,
    progress: ProgressHook | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train the DPO policy adapter in this run's checkpoint folder, resuming from its newest checkpoint.

    The folder is `<config.output_dir>/<run id>` (training/resume.py); the adapter is saved, with its
    metrics, to `<config.adapter_out>/<content hash>`.

    `progress` receives every logged metrics dict (with `step`); `callbacks` are extra transformers
    `TrainerCallback`s (e.g. one that commits a Modal volume on save).
    """
    inputs = check_inputs(config)
    _check_device(config)
    checkpoint_dir, resume_from = checkpoint_to_resume(config)
    finished = _finished_run(config, checkpoint_dir)
    if finished is not None:
        return finished
    tokenizer = _load_tokenizer(config)
    if inputs.row_format == "conversational" and not tokenizer.chat_template:
        raise TrainingInputError(
            f"conversational preference rows need a chat template, and the tokenizer of {config.base_model} "
            "has none. Use an instruct model's tokenizer or string rows."
        )
    if inputs.row_format == "string" and tokenizer.eos_token is None:
        raise TrainingInputError(f"string preference rows need an eos_token; {config.base_model} has none.")

    from datasets import Dataset
    from trl import DPOTrainer

    report_to = config.resolved_report_to()
    if report_to == "wandb":
        os.environ.setdefault("WANDB_PROJECT", config.wandb_project)
    model = _load_policy(config)
    policy_fp32 = _trainable_snapshot(model)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # TRL adds the frozen `ref` adapter: no second model copy
        args=_dpo_args(config, report_to, checkpoint_dir),
        train_dataset=Dataset.from_list(inputs.train_rows),
        eval_dataset=Dataset.from_list(inputs.val_rows),
        processing_class=tokenizer,
        callbacks=[_log_callback(), *([_progress_callback(progress)] if progress else []), *callbacks],
    )
    _restore_trainable(trainer.model, policy_fp32)  # before train() builds the optimizer over them
    if resume_from:
        restore_policy(trainer.model, resume_from)  # Trainer's own resume loads only `ref/`, never the policy
    elif config.init_adapter:  # a later round: the policy starts from the last round's adapter, `ref` stays SFT
        restore_policy(trainer.model, Path(config.init_adapter))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it print()s every metrics dict to stdout; we log them instead
    if len(trainer.train_dataset) == 0:
        raise TrainingInputError(
            f"no training pair of {config.train_path} fits: every prompt alone fills max_length="
            f"{config.max_length} tokens. Raise max_length or shorten the prompts."
        )
    if resume_from:
        logger.info("resuming from %s", resume_from)
    started = time.monotonic()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_metrics = _last_eval(trainer.state) or trainer.evaluate()
    adapter_dir = save_policy_adapter(trainer.model, Path(config.adapter_out), config.max_lora_rank)
    sha = adapter_sha256(adapter_dir)

    metrics = _final_metrics(trainer.state, train_output.metrics, eval_metrics)
    metrics.update(
        wall_seconds=round(time.monotonic() - started, 2),
        resumed_from=str(resume_from) if resume_from else None,
        train_rows=len(inputs.train_rows),
        eval_rows=len(inputs.val_rows),
        run_id=checkpoint_dir.name,
        log_history=_curve_points(trainer.state.log_history),  # for the dashboard's training-curves chart
    )
    metrics_path = adapter_dir / METRICS_FILE
    record = {"metrics": metrics, "adapter_sha256": sha, "config": config.to_dict()}
    metrics_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    logger.info("DPO adapter saved to %s (%d steps, sha256 %s)", adapter_dir, metrics["steps"], sha[:12])
    done = {"plan": _plan(config), "adapter_dir": str(adapter_dir), "adapter_sha256": sha}
    (checkpoint_dir / FINISHED_FILE).write_text(json.dumps(done, indent=2, sort_keys=True) + "\n")
    return TrainResult(adapter_dir, metrics, metrics_path, sha, int(metrics["steps"]), checkpoint_dir)


def _plan(config: DPOTrainConfig) -> dict[str, Any]:
    """How far the run was asked to go (not part of the run id: a longer plan continues the same run)."""
    return {"max_steps": config.max_steps, "num_train_epochs": config.num_train_epochs}


def _finished_run(config: DPOTrainConfig, checkpoint_dir: Path) -> TrainResult | None:
    """This run's result when it already finished this plan: a rerun (or a Modal retry, or --no-cache) returns
    the same adapter instead of resuming from its last checkpoint and training past the plan."""
    marker = checkpoint_dir / FINISHED_FILE
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    if done.get("plan") != _plan(config):
        return None  # a longer (or shorter) plan: train on from the newest checkpoint
    adapter_dir = Path(done["adapter_dir"])
    metrics_path = adapter_dir / METRICS_FILE
    if not metrics_path.is_file() or adapter_sha256(adapter_dir) != done["adapter_sha256"]:
        raise TrainingInputError(
            f"run {checkpoint_dir.name} finished before, but its adapter {adapter_dir} is gone or changed; "
            "restore it, or set restart=<label> to train the run again in a new folder"
        )
    metrics = json.loads(metrics_path.read_text())["metrics"]
    logger.info("run %s finished this plan before: returning its adapter %s unchanged", checkpoint_dir.name,
                adapter_dir)
    return TrainResult(adapter_dir, metrics, metrics_path, done["adapter_sha256"], int(metrics["steps"]),
                       checkpoint_dir)


def save_policy_adapter(model: Any, adapters_root: Path, max_lora_rank: int) -> Path:
    """Save only the policy adapter to `<adapters_root>/<content hash>` and check that vLLM can serve it.

    Written to a temp folder first and renamed into place, so a crash never leaves a half adapter behind;
    a folder of that hash already there holds the same files and is kept. Nothing is overwritten, so every
    recorded adapter path keeps pointing at the files it was recorded with.
    """
    adapters_root.mkdir(parents=True, exist_ok=True)
    tmp = adapters_root / f".saving-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=[POLICY_ADAPTER])
    nested = tmp / POLICY_ADAPTER
    if not (tmp / ADAPTER_CONFIG).is_file() and (nested / ADAPTER_CONFIG).is_file():
        for item in nested.iterdir():  # older PEFT put named adapters in a subfolder
            item.rename(tmp / item.name)
        nested.rmdir()
    leftover = sorted(p.name for p in tmp.iterdir() if p.is_dir())
    if leftover:
        raise RuntimeError(f"only the policy adapter should be saved, found sub-adapters {leftover} in {tmp}")
    check_servable(tmp, max_lora_rank)
    adapter_dir = adapters_root / adapter_folder_name(adapter_sha256(tmp))
    if (adapter_dir / ADAPTER_CONFIG).is_file():
        shutil.rmtree(tmp)  # the same content is already there
    else:
        tmp.rename(adapter_dir)
    return adapter_dir


def _trainable_snapshot(model: Any) -> dict[str, Any]:
    """An fp32 copy of every trainable parameter (the policy adapter as loaded from the SFT adapter)."""
    return {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}


def _restore_trainable(model: Any, snapshot: dict[str, Any]) -> None:
    """Undo TRL 1.16's QLoRA cast of the trainable adapter to bf16: put back the exact fp32 values.

    Under a quantized base, `DPOTrainer.__init__` casts every trainable parameter to bf16 and keeps no fp32
    copy, while its frozen `ref` copy stays fp32. At lr 5e-6 most AdamW updates are smaller than bf16's
    spacing and round away (measured: 94% of entries frozen after 3 steps), and the policy starts off the
    reference. Restoring the snapshot makes policy == reference at step 0 and lets every update land.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(snapshot) - set(params))
    if missing:
        raise RuntimeError(f"trainable parameters vanished while building the trainer: {missing[:5]}")
    for name, value in snapshot.items():
        param = params[name]
        if not param.requires_grad:
            raise RuntimeError(f"{name} was trainable before DPOTrainer and is frozen after it")
        param.data = value.to(param.device)


def restore_policy(model: Any, checkpoint: Path) -> None:
    """Load the checkpoint's policy adapter (`default`, saved at the checkpoint's root) into the model, in place.

    transformers 5.19's `Trainer._load_from_checkpoint` sees the `ref/` sub-adapter folder PEFT writes beside the
    policy and loads only the sub-folders: on `train(resume_from_checkpoint=...)` the optimizer, scheduler and
    step count come back but the policy stays the freshly loaded SFT adapter. Called before `train()`, this puts
    the checkpoint's values into the same Parameter objects the optimizer is then built over (and its saved
    moments loaded for), in their fp32 dtype. Every policy tensor must be in the file and nothing else.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(checkpoint) / "adapter_model.safetensors"
    if not weights.is_file():
        raise TrainingInputError(
            f"checkpoint {checkpoint} has no {weights.name} for the policy adapter; resuming from it would "
            "train on from the SFT weights. Remove the incomplete checkpoint folder to resume from the one before."
        )
    state = load_file(str(weights))
    before = {name: p for name, p in model.named_parameters() if f".{POLICY_ADAPTER}." in name and p.requires_grad}
    result = set_peft_model_state_dict(model, state, adapter_name=POLICY_ADAPTER)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if f".{POLICY_ADAPTER}." in k and "lora_" in k]
    if unexpected or missing or not state:
        raise TrainingInputError(
            f"checkpoint {checkpoint}'s policy adapter does not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} ({len(state)} tensors in the file); it belongs to another run"
        )
    after = {name: p for name, p in model.named_parameters() if f".{POLICY_ADAPTER}." in name and p.requires_grad}
    if any(after[name] is not param for name, param in before.items()):
        raise RuntimeError("restoring the policy replaced its parameters: the optimizer would not see them")
    logger.info("policy adapter restored from %s (%d tensors)", weights, len(state))


def _check_device(config: DPOTrainConfig) -> None:
    if not config.use_cpu:
        import torch

        if not torch.cuda.is_available():
            raise TrainingInputError(
                "no CUDA GPU found, and the config is for a GPU run (use_cpu=False). Run on Modal "
                "(`train --remote`) or, for a tiny model, use DPOTrainConfig.cpu_test()."
            )
    if config.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise TrainingInputError(
                "load_in_4bit=True needs the bitsandbytes package; pip install bitsandbytes."
            ) from e


def _load_tokenizer(config: DPOTrainConfig) -> Any:
    """The SFT adapter's tokenizer when it saved one (the chat template it was trained with), else the base's."""
    from transformers import AutoTokenizer

    source = config.sft_adapter if (Path(config.sft_adapter) / "tokenizer_config.json").is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(source or config.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_policy(config: DPOTrainConfig) -> Any:
    """Base model (4-bit NF4 with bf16 compute, on CUDA or CPU; fp32 when debugging) + the SFT adapter,
    trainable, named `default`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if config.load_in_4bit:
        kwargs: dict[str, Any] = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True,
            ),
            "dtype": torch.bfloat16,
            "device_map": {"": "cpu" if config.use_cpu else torch.cuda.current_device()},
        }
    elif config.use_cpu:
        kwargs = {"dtype": torch.float32}
    else:
        kwargs = {"dtype": torch.bfloat16 if config.bf16 else torch.float32}
    base = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    base.config.use_cache = False  # incompatible with gradient checkpointing, useless in training
    model = PeftModel.from_pretrained(base, config.sft_adapter, adapter_name=POLICY_ADAPTER, is_trainable=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise RuntimeError(f"the SFT adapter {config.sft_adapter} loaded without trainable parameters")
    logger.info("policy adapter %r: %d trainable parameters", POLICY_ADAPTER, trainable)
    return model


def _dpo_args(config: DPOTrainConfig, report_to: str, checkpoint_dir: Path) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(checkpoint_dir),
        beta=config.beta,
        loss_type=config.loss_types,
        label_smoothing=config.label_smoothing,
        ld_alpha=config.ld_alpha,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        logging_steps=config.logging_steps,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        bf16=config.bf16,
        use_cpu=config.use_cpu,
        # The name every transformers 5 release knows (5.2x also calls it `activation_checkpointing`).
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        seed=config.seed,
        report_to=report_to,
        run_name=config.run_name,
        disable_tqdm=config.disable_tqdm,
    )


def _last_eval(state: Any) -> dict[str, float] | None:
    """The evaluation logged at the final step, if the schedule already ran one there (saves a second pass)."""
    for log in reversed(state.log_history):
        if "eval_loss" in log:
            return log if log.get("step") == state.global_step else None
    return None


def _final_metrics(state: Any, train_metrics: dict, eval_metrics: dict) -> dict[str, Any]:
    last_train = next((log for log in reversed(state.log_history) if "loss" in log), {})
    metrics: dict[str, Any] = {f"train_{k}": _num(last_train.get(k)) for k in _TRAIN_KEYS}
    metrics["train_loss_mean"] = _num(train_metrics.get("train_loss"))
    metrics["train_runtime"] = _num(train_metrics.get("train_runtime"))
    for k in _TRAIN_KEYS:
        metrics[f"eval_{k}"] = _num(eval_metrics.get(f"eval_{k}"))
    metrics["eval_runtime"] = _num(eval_metrics.get("eval_runtime"))
    metrics["steps"] = int(state.global_step)
    metrics["epoch"] = _num(state.epoch)
    return metrics


def _curve_points(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Every logged step's loss, rewards/margins and rewards/accuracies (train and eval_), JSON-safe."""
    keys = [f"{prefix}{k}" for prefix in ("", "eval_") for k in ("loss", "rewards/margins", "rewards/accuracies")]
    points = []
    for log in log_history:
        point = {k: v for k in keys if (v := _num(log.get(k))) is not None}
        if point and "step" in log:
            points.append({"step": int(log["step"]), **point})
    return points


def _num(value: Any) -> float | None:
    """A JSON-safe number: None when missing or not finite (a NaN loss is logged, not hidden)."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        logger.warning("non-finite metric value %r", value)
        return None
    return value


def _log_callback() -> Any:
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
                logger.info("step %d/%d: %s", state.global_step, state.max_steps, shown)

    return LogCallback()


def _progress_callback(hook: ProgressHook) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                hook({"step": state.global_step, **logs})

    return ProgressCallback()
