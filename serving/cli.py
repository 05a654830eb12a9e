"""`deploy` and `serve-local` subcommands of `python -m pipelines.dpo` (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def parse_adapter(text: str) -> tuple[str, Path]:
    """`NAME=DIR` -> (NAME, Path(DIR)); argparse type for --adapter."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter wants NAME=DIR (e.g. seinfeld=/path/to/adapter); got {text!r}")
    return name, Path(path)


def register(subparsers: argparse._SubParsersAction) -> None:
    from infra.names import NAMES

    deploy = subparsers.add_parser(
        "deploy",
        help="redeploy the adapters (Modal vLLM, or --local vLLM on the CPU) and check each one answers",
        description="Deploy the serving app, wait until /v1/models lists every adapter, send one chat request "
        "to each, and write a record of what is live. Exit code 1 names the part that failed. "
        "`deploy --local --stop` stops the local server a run left running.",
    )
    deploy.add_argument("--local", action="store_true", help="restart the local vLLM (CPU build) instead of Modal")
    deploy.add_argument("--stop", action="store_true", help="with --local: stop the local server and exit")
    deploy.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the endpoint (default: 1200 Modal, 180 local)")
    deploy.add_argument("--expect", action="append", default=None, metavar="NAME",
                        help=f"Modal: adapter that must be live (repeatable; default {NAMES.sft_model_name} "
                        f"and {NAMES.dpo_model_name})")
    _add_local_arguments(deploy)
    deploy.set_defaults(func=_deploy)

    serve = subparsers.add_parser(
        "serve-local",
        help="run the local vLLM (CPU build: the last local deployment's base and adapters) until Ctrl-C",
        description="Serve a local base model and LoRA adapters under the served names with vLLM's CPU build, "
        "through the same lifecycle as `deploy --local`; Ctrl-C stops it. The API key is $SERVE_API_KEY, "
        "else a random one kept in <state-dir>/local_server.json.",
    )
    _add_local_arguments(serve)
    serve.set_defaults(func=_serve_local)


def _add_local_arguments(parser: argparse.ArgumentParser) -> None:
    from infra.names import NAMES
    from training.local_kit import DEFAULT_LOCAL_MODEL

    parser.add_argument("--state-dir", type=Path, default=Path("data/runs/serving"),
                        help="where deploy records and the local server's pid file live")
    parser.add_argument("--base", type=Path, default=None,
                        help="local: base model folder (default: what the last local deployment served, as `make run` "
                        "left it; without one, the --kit's base)")
    parser.add_argument("--adapter", type=parse_adapter, action="append", default=[], metavar="NAME=DIR",
                        help="local: adapter to serve (repeatable; default: the last local deployment's adapters; "
                        f"without one, the --kit's {NAMES.sft_model_name} adapter, and its {NAMES.dpo_model_name} "
                        "one where the kit has one)")
    parser.add_argument("--kit", choices=("smollm2", "tiny"), default=DEFAULT_LOCAL_MODEL,
                        help=f"local, with no deployment recorded: the kit to serve (default {DEFAULT_LOCAL_MODEL}, "
                        "the local profile's model)")
    parser.add_argument("--port", type=int, default=0, help="local: port (0 = a free one)")


def _local_defaults(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """--base and --adapter; else what the last local deployment served (a run's SmolLM2 with its SFT and DPO
    adapters), where its files are still there; else the --kit's base and adapters."""
    adapters = dict(args.adapter)
    if args.base is not None and adapters:
        return args.base, adapters
    from infra.names import NAMES
    from serving.records import load_record
    from training.local_kit import ensure_local_kit, local_model_key

    last = load_record(args.state_dir, "local")
    if last is not None and Path(last.base_model).is_dir() and all(Path(a.path).is_dir() for a in last.adapters):
        return args.base or Path(last.base_model), adapters or {a.name: Path(a.path) for a in last.adapters}
    kit = ensure_local_kit(local_model_key(args.kit))
    default = {NAMES.sft_model_name: kit.sft_adapter_dir}
    dpo = getattr(kit, "dpo_adapter_dir", None)  # the tiny kit carries one; SmolLM2's DPO adapter comes from a run
    if dpo is not None:
        default[NAMES.dpo_model_name] = dpo
    return args.base or kit.base_dir, adapters or default


def _deploy(args: argparse.Namespace) -> int:
    from serving.errors import DeployError
    from serving.local_deploy import deploy_local, stop_local
    from serving.modal_deploy import deploy_modal

    if args.stop:
        if not args.local:
            print("error: --stop works with --local (stop a Modal app with `modal app stop`)", file=sys.stderr)
            return 2
        stopped = stop_local(args.state_dir)
        print("stopped the local server" if stopped else f"no local server was running ({args.state_dir})")
        return 0
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
    if args.local:
        print(f"running in the background (pid {record.pid}); stop it with "
              f"`python -m pipelines.dpo deploy --local --stop --state-dir {args.state_dir}`", file=sys.stderr)
    return 0


def _serve_local(args: argparse.Namespace) -> int:
    import signal
    import time

    from serving.errors import DeployError
    from serving.local_deploy import deploy_local, stop_local

    base, adapters = _local_defaults(args)
    try:
        record = deploy_local(base, adapters, state_dir=args.state_dir, port=args.port)
    except DeployError as e:
        logger.error("the local server did not start (%r): %s", e.part, e.detail)
        return 1
    print(json.dumps({"url": record.url, "base_url": record.base_url, "models": record.models,
                      "pid": record.pid, "api_key_in": str(args.state_dir / "local_server.json")}), flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_local(args.state_dir)
    return 0
