"""`deploy` and `serve-local` subcommands of `python -m pipelines.dpo` (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from infra.names import NAMES
    from serving.local_args import add_server_arguments, parse_adapter

    deploy = subparsers.add_parser(
        "deploy",
        help="redeploy the adapters (Modal vLLM, or --local) and check each one answers",
        description="Deploy the serving app, wait until /v1/models lists every adapter, send one chat request "
        "to each, and write a record of what is live. Exit code 1 names the part that failed.",
    )
    deploy.add_argument("--local", action="store_true", help="restart the local CPU server instead of Modal")
    deploy.add_argument("--state-dir", type=Path, default=Path("data/runs/serving"),
                        help="where deploy records and the local server's pid file live")
    deploy.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the endpoint (default: 1200 Modal, 180 local)")
    deploy.add_argument("--expect", action="append", default=None, metavar="NAME",
                        help=f"Modal: adapter that must be live (repeatable; default {NAMES.sft_model_name} "
                        f"and {NAMES.dpo_model_name})")
    deploy.add_argument("--base", type=Path, default=None, help="local: base model folder (default: tiny kit)")
    deploy.add_argument("--adapter", type=parse_adapter, action="append", default=[], metavar="NAME=DIR",
                        help=f"local: adapter to serve (repeatable; default {NAMES.sft_model_name}=<tiny kit SFT>)")
    deploy.add_argument("--port", type=int, default=0, help="local: port (0 = a free one)")
    deploy.set_defaults(func=_deploy)

    serve = subparsers.add_parser(
        "serve-local",
        help="run the OpenAI-compatible local server (tiny base + adapters) in the foreground",
        description="Serve a local base model and LoRA adapters under the served names, as vLLM would.",
    )
    add_server_arguments(serve, base_required=False)
    serve.set_defaults(func=_serve_local)


def _local_defaults(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    adapters = dict(args.adapter)
    if args.base is not None and adapters:
        return args.base, adapters
    from infra.names import NAMES
    from training.tiny import ensure_tiny_kit

    kit = ensure_tiny_kit()
    return args.base or kit.base_dir, adapters or {NAMES.sft_model_name: kit.sft_adapter_dir}


def _deploy(args: argparse.Namespace) -> int:
    from serving.deploy import deploy_local, deploy_modal
    from serving.errors import DeployError

    try:
        if args.local:
            base, adapters = _local_defaults(args)
            record = deploy_local(base, adapters, state_dir=args.state_dir, timeout_s=args.timeout or 180.0,
                                  port=args.port)
        else:
            kwargs = {"expected": tuple(args.expect)} if args.expect else {}
            record = deploy_modal(state_dir=args.state_dir, timeout_s=args.timeout or 1200.0, **kwargs)
    except DeployError as e:
        logger.error("deploy failed at %r: %s", e.part, e.detail)
        return 1
    json.dump(record.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _serve_local(args: argparse.Namespace) -> int:
    from serving.local_server import run

    args.base, adapters = _local_defaults(args)
    args.adapter = list(adapters.items())
    return run(args)
