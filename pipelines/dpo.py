"""`python -m pipelines.dpo`: the command line for every stage and for the whole pipeline.

Each subcommand lives in a module that registers itself with `register(subparsers)`; those modules
keep heavy imports (ZenML, torch, Modal) inside their functions so `generate` starts without them.
Bad settings or input end here, whichever command raised them: exit 2 and the message, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine.errors import ConfigError  # the engine's and the pipeline's (PipelineConfigError is one)
from training.config import ConfigError as TrainingConfigError  # training's own: its container has no engine/
from training.errors import TrainingInputError

# Exit 2 (bad settings or input, nothing sent), as the README promises, for a command that did not catch them.
BAD_SETTINGS = (ConfigError, TrainingConfigError, TrainingInputError)

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "pipelines.cli_run",  # run, dashboard
    "pipelines.cli_stages",  # generate, judge, estimate, split
    "pipelines.cli_evaluate",  # evaluate
    "pipelines.cli_chat",  # chat
    "pipelines.cli_publish",  # publish
    "training.cli",  # upload, train
    "serving.cli",  # deploy, serve-local
    "arena.cli",  # arena, arena export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.dpo",
        description="Sample, judge, split, train and serve: DPO for the Seinfeld SFT adapter.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # that part of the product is not installed in this checkout
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except BAD_SETTINGS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (engine.errors.ExitNow) or one outside a stage: the one exit path
        print("interrupted: finished rows are on disk; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
