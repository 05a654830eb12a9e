"""`evaluate`: a judged A/B win rate of "seinfeld-dpo" over "seinfeld" on prompts DPO never trained on."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine.errors import ConfigError
from pipelines.cli_stages import _batch_flags, _engine_flags, _judge_flags, _judge_settings, _options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="A/B: sample both served models on held-out prompts, judge each pair in both orders, win rate",
        description="Sample each prompt once from --baseline and once from --challenger (same settings, same "
        "seed), judge every pair in both orders (a win or a loss only when both agree, else a tie) and write "
        "result.json and report.md: wins, losses, ties, win rates with Wilson 95%% intervals, order agreement, "
        "lengths and the worst losses. A prompt a model answers only blank after its resamples is a forfeit: a "
        "loss for that model (a tie when both do), decided without the judge and never asked again; other "
        "failures (HTTP errors, timeouts) wait for a rerun. Rerun the same command to resume. Exit 1 when rows "
        "are left or the --min-win-rate gate fails.",
    )
    p.add_argument("--prompts", type=Path, required=True,
                   help="prompts DPO never trained on: the split's val.jsonl, or any {prompt, completion?} JSONL")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--serve-url", default=None, help="OpenAI-compatible base URL (default: env SERVE_URL)")
    where.add_argument("--local", action="store_true",
                       help="the local vLLM `deploy --local` left running (URL and key from --state-dir)")
    p.add_argument("--state-dir", type=Path, default=Path("data/runs/serving"), help="with --local: its records")
    p.add_argument("--baseline", default="seinfeld", help="the model DPO started from")
    p.add_argument("--challenger", default="seinfeld-dpo", help="the model under test")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for both models")
    p.add_argument("--min-win-rate", type=float, default=None,
                   help="gate: exit 1 when the lower end of the 95%% interval (all pairs, ties half) is below this")
    p.add_argument("--estimate", action="store_true",
                   help="sample and pair, then print the judge's forecast for the pairs and stop (nothing paid)")
    p.add_argument("--max-cost", type=float, default=None, help="USD per run for the judge; rerun to continue")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout of the judge in seconds")
    _judge_flags(p, completions=False)
    _batch_flags(p)
    _engine_flags(p, concurrency=16)
    p.set_defaults(func=cmd_evaluate, swap_check=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stages.evaluate.stage import EvaluateSettings, run_evaluate
    from stages.generate import GenerateSettings

    try:
        serve_url, serve_key = _endpoint(args)
        generate = GenerateSettings(serve_url=serve_url, temperature=args.temperature, max_tokens=args.max_tokens,
                                    seed=args.seed)
        settings = EvaluateSettings(baseline=args.baseline, challenger=args.challenger,
                                    min_win_rate=args.min_win_rate)
        judge = _judge_settings(args)
        options = _options(args)
        if args.estimate:
            return _estimate(args, settings, generate, judge, options, serve_key)
        run = asyncio.run(run_evaluate(args.prompts, args.out, settings, generate, judge, options,
                                       serve_api_key=serve_key))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(run.result.headline(), file=sys.stderr)
    print(f"  report: {args.out / 'report.md'}", file=sys.stderr)
    if run.unpaired:
        print(f"  {run.unpaired} prompts were not answered by both models yet: rerun to finish", file=sys.stderr)
    if run.pairing.forfeits:
        f = run.result.forfeits
        print(f"  {run.pairing.forfeits} prompts a model answered only blank, decided without the judge "
              f"({settings.baseline} {f['baseline']}, {settings.challenger} {f['challenger']}, both {f['both']}): "
              f"see {args.out / 'forfeits.jsonl'}", file=sys.stderr)
    code = run.exit_code
    gate = run.result.gate
    if gate is not None and gate["passed"] is None:
        print("  gate: no verdict yet (the A/B is incomplete): rerun to finish it", file=sys.stderr)
        code = max(code, 1)
    elif gate is not None and gate["passed"] is False:
        print(f"  gate failed: the interval's lower end {gate['lower_bound']:.3f} is below --min-win-rate "
              f"{gate['min_win_rate']:.3f}", file=sys.stderr)
        code = max(code, 1)
    return code


def _endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    import os

    if args.local:
        from serving.local_deploy import local_api_key
        from serving.records import load_record

        record = load_record(args.state_dir, "local")
        if record is None:
            raise ConfigError(f"no local deployment recorded in {args.state_dir}; run "
                              "`python -m pipelines.dpo deploy --local` (or the pipeline) first")
        return record.base_url, local_api_key(args.state_dir)
    url = args.serve_url or os.environ.get("SERVE_URL")
    if not url:
        raise ConfigError("no endpoint: pass --serve-url, set SERVE_URL, or use --local")
    return url, os.environ.get("SERVE_API_KEY")


def _estimate(args, settings, generate, judge, options, serve_key) -> int:  # noqa: ANN001 - see cmd_evaluate
    """Sample and pair (the free part: your own endpoint), then forecast judging the pairs in both orders."""
    import dataclasses

    from stages.evaluate.stage import PAIRS_FILE, sample_and_pair
    from stages.judge import estimate

    _, pairing = asyncio.run(sample_and_pair(args.prompts, args.out, settings, generate, options,
                                             serve_api_key=serve_key))
    print(f"{pairing.pairs} pairs sampled ({pairing.unpaired} prompts not answered by both yet, "
          f"{pairing.forfeits} forfeited: answered only blank, not judged)", file=sys.stderr)
    print(estimate(args.out / PAIRS_FILE, dataclasses.replace(judge, swap_check=True)).render())
    return 0
