"""Subcommands `upload` and `train` for `python -m pipelines.dpo` (heavy imports happen inside handlers)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TINY_RUN_DIR = Path("data/runs/dpo-tiny")  # where --tiny puts checkpoints and the adapter by default
PROGRESS_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies",
                 "eval_rewards/margins", "learning_rate", "epoch")


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "upload",
        help="put a train/val preference split on the Modal volume (content-addressed)",
        description="Upload train.jsonl and val.jsonl to the Modal volume under /data/dpo/<hash>/, or (--adapter) "
        "the SFT adapter under /adapters/nothing-gpt/<hash>/. Uploading the same content again uploads nothing.",
    )
    up.add_argument("--train", type=Path, help="training preference JSONL")
    up.add_argument("--val", type=Path, help="validation preference JSONL")
    up.add_argument("--adapter", type=Path, help="SFT LoRA adapter folder (prints the NGPT_SFT_ADAPTER to export)")
    up.set_defaults(func=_upload)

    tr = subparsers.add_parser(
        "train",
        help="DPO-train the SFT adapter (here, or on Modal with --remote)",
        description="DPO on top of the SFT LoRA adapter (one base model, a policy and a frozen reference "
        "adapter). Local: --data is a folder with train.jsonl and val.jsonl. --remote: --data is a volume "
        "path printed by `upload` (e.g. /data/dpo/<hash>).",
    )
    tr.add_argument("--data", required=True, help="folder with train.jsonl/val.jsonl, or a volume path")
    where = tr.add_mutually_exclusive_group()
    where.add_argument("--remote", action="store_true", help="train on Modal (L4, QLoRA)")
    where.add_argument(
        "--tiny", action="store_true",
        help="CPU run on the tiny local model kit (a smoke test of the whole path, not a real model)",
    )
    tr.add_argument("--fp32", action="store_true",
                    help="with --tiny: load the base unquantized in fp32 instead of 4-bit NF4 (debugging only)")
    tr.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    tr.add_argument("--output-dir", help="checkpoint folder (resumed from when it holds checkpoints)")
    tr.add_argument("--adapter-out", help="where the DPO adapter is saved")
    tr.add_argument("--base", dest="base_model", help="base model id or folder")
    tr.add_argument("--sft-adapter", help="SFT adapter folder")
    tr.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="any DPOTrainConfig setting, e.g. --set beta=0.2 --set learning_rate=1e-5 (repeatable)",
    )
    tr.set_defaults(func=_train)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to a dict; values are read as JSON when they parse (numbers, true, null), except for a
    text setting, which keeps its text (`--set restart=20261205` is a label, not a number). DPOTrainConfig checks
    each value's kind and names the key."""
    from training.config import ConfigError, DPOTrainConfig, declared_kinds

    text_only = {name for name, kinds in declared_kinds(DPOTrainConfig).items() if not {int, float, bool} & set(kinds)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE; got {pair!r}")
        if key in text_only and raw != "null":
            out[key] = raw
            continue
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_settings(args.settings)
    for name in ("max_steps", "output_dir", "adapter_out", "base_model", "sft_adapter"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return overrides


def _upload(args: argparse.Namespace) -> int:
    from training.errors import TrainingInputError
    from training.modal_auth import ModalCredentialsError
    from training.upload import upload_dataset

    split = (args.train, args.val)
    if (args.adapter is not None) == any(split) or (any(split) and not all(split)):
        print("error: upload wants --train T --val V (a split) or --adapter DIR (the SFT adapter)", file=sys.stderr)
        return 2
    try:
        if args.adapter is not None:
            from training.upload import upload_adapter

            remote = upload_adapter(args.adapter)
            print(f"export NGPT_SFT_ADAPTER={remote}  # training and serving read the SFT adapter from it",
                  file=sys.stderr)
        else:
            remote = upload_dataset(args.train, args.val)
    except (TrainingInputError, ModalCredentialsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(remote)
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import ConfigError
    from training.errors import TrainingInputError
    from training.modal_auth import ModalCredentialsError

    result = sys.stdout
    try:
        # stdout carries the result JSON only: whatever the work prints there (transformers' log dicts, a tiny
        # kit build's TRL runs, Modal's output) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            overrides = overrides_from_args(args)
            if args.remote:
                from training.remote import train_remote

                metrics = train_remote(args.data, overrides)
            else:
                if args.fp32 and not args.tiny:
                    raise ConfigError("--fp32 is for --tiny CPU runs; the real run is QLoRA on the 4-bit base")
                metrics = _train_local(args.data, overrides, tiny=args.tiny, fp32=args.fp32)
    except (ConfigError, TrainingInputError, ModalCredentialsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2, sort_keys=True), file=result)
    return 0


def _log_progress(logs: dict[str, float]) -> None:
    shown = {k: round(v, 4) for k, v in logs.items() if k in PROGRESS_KEYS and isinstance(v, float | int)}
    logger.info("step %s: %s", logs.get("step"), shown)


def _train_local(data: str, overrides: dict[str, Any], tiny: bool, fp32: bool = False) -> dict[str, Any]:
    from training.config import DPOTrainConfig
    from training.dpo import train_dpo

    if tiny:
        from training.tiny import ensure_tiny_kit

        kit = ensure_tiny_kit()
        defaults = {
            "base_model": str(kit.base_dir),
            "sft_adapter": str(kit.sft_adapter_dir),
            "output_dir": str(TINY_RUN_DIR / "checkpoints"),
            "adapter_out": str(TINY_RUN_DIR / "adapter"),
        }
        config = DPOTrainConfig.cpu_test(fp32=fp32, **{**defaults, **overrides, "data_dir": data})
    else:
        config = DPOTrainConfig.from_overrides(overrides, data_dir=data)
    result = train_dpo(config, progress=_log_progress)
    return {
        **result.metrics,
        "adapter_dir": str(result.adapter_dir),
        "adapter_sha256": result.adapter_sha256,
        "metrics_path": str(result.metrics_path),
    }
