"""Stage subcommands: generate, judge, estimate, split (evaluate: cli_evaluate.py). No ZenML needed to run them."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError
from engine.options import RunOptions
from stages.judge.backends import DEFAULT_BACKEND, REGISTRY

if TYPE_CHECKING:
    from stages.judge.settings import JudgeSettings


def _engine_flags(p: argparse.ArgumentParser, concurrency: int) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, summary, rejects, errors)")
    p.add_argument("--limit", type=int, default=None, help="only the first N valid input rows")
    p.add_argument("--concurrency", type=int, default=concurrency, help="most requests in flight")
    p.add_argument("--rps", type=float, default=None, help="most requests started per second")
    p.add_argument("--rpm", type=float, default=None, help="most requests admitted per minute (your API tier's)")
    p.add_argument("--tpm", type=float, default=None,
                   help="most tokens admitted per minute, counted as OpenAI admits them (the judge; your tier's)")
    p.add_argument("--strict", action="store_true", help="fail on any bad input row before any request")
    p.add_argument("--fresh", action="store_true", help="move the old output aside and start over")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight rows may finish after Ctrl-C")
    p.add_argument("--max-attempts", type=int, default=6, help="tries per request for retryable failures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        concurrency=args.concurrency,
        rps=args.rps,
        rpm=args.rpm,
        tpm=args.tpm,
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
    from stages.generate import GenerateSettings, run_generate

    try:
        if not (args.serve_url or os.environ.get("SERVE_URL")):
            raise ConfigError(
                "no endpoint to sample from: pass --serve-url URL or set SERVE_URL (the OpenAI-compatible base URL "
                "ending in /v1; `deploy --local` prints the local server's, on a free port, and records it in "
                "data/runs/serving/local_deployment.json)"
            )
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


def _judge_settings(args: argparse.Namespace) -> JudgeSettings:
    from stages.judge.cost import Prices
    from stages.judge.settings import JudgeSettings

    kwargs: dict = {}
    if args.judge_model:
        kwargs["judge_model"] = args.judge_model
    if args.judge_url:
        kwargs["judge_url"] = args.judge_url
    prices = (args.price_in, args.price_cached_in, args.price_out)
    if any(p is not None for p in prices):
        if None in prices:
            raise ConfigError("give all three of --price-in, --price-cached-in and --price-out (USD per 1M tokens)")
        kwargs["prices"] = Prices(*prices)
    return JudgeSettings(
        backend=args.backend,
        reasoning_effort=args.reasoning_effort,
        max_completion_tokens=args.max_completion_tokens,
        max_completion_tokens_cap=args.max_completion_tokens_cap,
        swap_check=args.swap_check,
        max_cost_usd=getattr(args, "max_cost", None),
        min_confidence=getattr(args, "min_confidence", None),
        expected_output_tokens=args.expected_output_tokens,
        timeout_s=getattr(args, "timeout", 300.0),
        mode=args.mode,
        finish_live=getattr(args, "finish_live", False),
        poll_interval_s=getattr(args, "poll_interval", 30.0),
        **kwargs,
    )


def cmd_judge(args: argparse.Namespace) -> int:
    from stages.judge import run_judge

    try:
        settings = _judge_settings(args)
        options = _options(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = _run(run_judge(args.completions, args.out, settings, options, resume_command=resume_command()))
    if code != 2 and (args.out / "report.json").exists():
        print(_report_highlights(args.out), file=sys.stderr)
    return code


def _report_highlights(out: Path) -> str:
    import orjson

    r = orjson.loads((out / "report.json").read_bytes())
    rows = r["rows"]
    filtered = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in rows["filtered"].items() if n) or "none"
    skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in rows["skipped"].items()) or "none"
    lines = [f"  pairs: {rows['pairs']} kept; filtered: {filtered}; skipped: {skipped}"]
    if r["swap"]:
        lines.append(f"  swap agreement: {r['swap']['agreed']}/{r['swap']['checked']}")
    u = r["usage"]
    if u.get("batch_rows"):
        lines.append(f"  batch API: {u['batch_rows']} row(s) for ${u['batch_cost_usd']:.4f}, "
                     f"${u['batch_saving_usd']:.4f} saved vs live prices")
    lines += [f"  warning: {w}" for w in r["warnings"]]
    lines.append(f"  quality report: {out / 'report.md'}")
    return "\n".join(lines)


def cmd_estimate(args: argparse.Namespace) -> int:
    from stages.judge import estimate

    try:
        result = estimate(args.completions, _judge_settings(args), limit=args.limit)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        import orjson

        print(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(result.render())
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from stages.split import split_preferences

    try:
        if args.preferences.is_dir():
            hint = args.preferences / "preferences.jsonl"
            raise ConfigError(f"--preferences {args.preferences} is a folder; give the judge's preferences file "
                              f"itself{f', e.g. {hint}' if hint.is_file() else ' (preferences.jsonl in its --out)'}")
        result = split_preferences(args.preferences, args.out, args.val_fraction)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.render(), file=sys.stderr)
    return 0


def _judge_flags(p: argparse.ArgumentParser, *, completions: bool = True) -> None:
    """What the judge does (shared by judge, estimate and evaluate)."""
    if completions:
        p.add_argument("--completions", type=Path, required=True, help="the generate stage's completions.jsonl")
    p.add_argument("--backend", choices=tuple(REGISTRY), default=DEFAULT_BACKEND,
                   help="; ".join(f"{b.name}: {b.help}" for b in REGISTRY.values()) + f" (default {DEFAULT_BACKEND})")
    p.add_argument("--judge-model", default=None, help="judge model (default: env JUDGE_MODEL, else gpt-5)")
    p.add_argument("--judge-url", default=None,
                   help="OpenAI-compatible base URL (default: env OPENAI_BASE_URL, else api.openai.com)")
    p.add_argument("--reasoning-effort", default="low", help="gpt-5: minimal, low (default), medium or high")
    p.add_argument("--max-completion-tokens", type=int, default=4096,
                   help="first output budget per request, reasoning included")
    p.add_argument("--max-completion-tokens-cap", type=int, default=16384,
                   help="an answer cut by the budget is retried with double the budget, up to this")
    p.add_argument("--swap-check", action="store_true",
                   help="judge each row again in reversed order; keep the pair only if best and worst agree")
    p.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens (default: gpt-5 table)")
    p.add_argument("--price-cached-in", type=float, default=None, help="USD per 1M cached input tokens")
    p.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens, reasoning included")
    p.add_argument("--expected-output-tokens", type=int, default=None,
                   help="output tokens per request for the forecast (default: a guess per reasoning effort)")
    p.add_argument("--mode", choices=("live", "batch"), default="live",
                   help="live (default): one request per row as it goes; batch: OpenAI's Batch API, half the price, "
                        "answers within 24 h (resumable: rerun the same command to keep polling)")


def _batch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--finish-live", action="store_true",
                   help="--mode batch: judge live what the first batches leave (failed, expired, malformed)")
    p.add_argument("--poll-interval", type=float, default=30.0,
                   help="--mode batch: seconds between batch status polls")


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

    p = sub.add_parser("judge", help="rank each prompt's completions with GPT-5 into preference pairs")
    _judge_flags(p)
    p.add_argument("--max-cost", type=float, default=None,
                   help="USD per run: stop scheduling rows once the spend would pass this; rerun to continue")
    p.add_argument("--min-confidence", type=int, default=None,
                   help="drop pairs the judge rates below this confidence, 1-5 (recorded in the skipped file)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    _batch_flags(p)
    _engine_flags(p, concurrency=16)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("estimate", help="forecast the judge's requests, tokens and dollars; sends nothing")
    _judge_flags(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N valid rows")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("split", help="split preference pairs into train.jsonl and val.jsonl by prompt hash")
    p.add_argument("--preferences", type=Path, required=True, help="the judge's preferences.jsonl")
    p.add_argument("--out", type=Path, required=True, help="output folder for train.jsonl, val.jsonl, split.json")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of prompts for validation")
    p.set_defaults(func=cmd_split)
