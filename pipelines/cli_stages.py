"""Stage subcommands: generate, judge, estimate, split. No ZenML needed to run any of them."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.options import RunOptions


def _engine_flags(p: argparse.ArgumentParser, concurrency: int) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, summary, rejects, errors)")
    p.add_argument("--limit", type=int, default=None, help="only the first N valid input rows")
    p.add_argument("--concurrency", type=int, default=concurrency, help="most requests in flight")
    p.add_argument("--rps", type=float, default=None, help="most requests started per second")
    p.add_argument("--strict", action="store_true", help="fail on any bad input row before any request")
    p.add_argument("--fresh", action="store_true", help="move the old output aside and start over")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight rows may finish after Ctrl-C")
    p.add_argument("--max-attempts", type=int, default=6, help="tries per request for retryable failures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        concurrency=args.concurrency,
        rps=args.rps,
        strict=args.strict,
        fresh=args.fresh,
        limit=args.limit,
        grace_s=args.grace,
        max_attempts=args.max_attempts,
        progress=not args.no_progress,
        handle_signals=True,
    )


def resume_command() -> str:
    """The command that was run, minus --fresh: rerunning it resumes."""
    argv = [a for a in sys.argv[1:] if a != "--fresh"]
    return "python -m pipelines.dpo " + shlex.join(argv) if argv else "python -m pipelines.dpo"


def _finish(summary) -> int:  # noqa: ANN001 - StageSummary
    print(summary.render(), file=sys.stderr)
    return summary.exit_code


def _run(coro) -> int:  # noqa: ANN001 - a coroutine returning a StageSummary
    try:
        return _finish(asyncio.run(coro))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.generate import GenerateSettings, run_generate

    try:
        kwargs = {"serve_url": args.serve_url} if args.serve_url else {}
        settings = GenerateSettings(
            model=args.model, n=args.n, temperature=args.temperature, max_tokens=args.max_tokens,
            seed=args.seed, timeout_s=args.timeout, **kwargs,
        )
        options = _options(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _run(run_generate(args.prompts, args.out, settings, options, resume_command=resume_command()))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample n completions per prompt from the served SFT model")
    p.add_argument("--prompts", type=Path, required=True, help="JSONL of {prompt, completion?} rows")
    p.add_argument("--serve-url", default=None, help="OpenAI-compatible base URL (default: env SERVE_URL)")
    p.add_argument("--model", default="seinfeld", help="served model name")
    p.add_argument("--n", type=int, default=3, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None, help="base sampling seed (reproducible samples)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    _engine_flags(p, concurrency=32)
    p.set_defaults(func=cmd_generate)
