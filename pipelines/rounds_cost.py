"""The rounds' cost forecast, before anything is sampled or paid: per round and in total.

A round's completions do not exist until it samples, so each is forecast on stand-in rows: the round's real
prompts (its slice of the prompt file), each with `n` distinct completions of `max_tokens` tokens (the most the
sampler may write), through the judge's own `estimate` (stages/judge/estimate.py: the same request builder and
prices). The A/B is the same with two completions per held-out prompt, judged in both orders: once per round
against SFT, and from round 2 once more against the previous round. `run --rounds K --estimate` prints it;
`--max-cost X` refuses to start when the expected total is above X. A round already recorded as finished
(`pipelines.rounds.recorded_rounds`: a rerun does not run it again) costs nothing more: it is listed as done
and left out of the total, which is what is left to pay.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.rows import BOM, Reject, parse_line, validate_prompt_row
from pipelines.config import PipelineConfig, PipelineConfigError, RoundsSettings
from pipelines.forecast import StageForecast, forecast_stages
from stages.judge.estimate import CHARS_PER_TOKEN, Estimate, estimate

PROBLEMS_SHOWN = 20  # bad prompt lines named one by one; the rest counted
SAMPLE_ROWS = 1_000  # a larger prompt file is forecast on this many evenly spaced rows, scaled up


@dataclass(frozen=True)
class RoundForecast:
    round: int
    prompts: int
    judge_requests: int
    ab_requests: int
    cost_usd: float  # expected
    cost_max_usd: float
    recorded: bool = False  # finished before (a round record): nothing more to send or pay
    stages: tuple[StageForecast, ...] = ()  # per stage: requests, tokens, dollars, hours (pipelines/forecast.py)


def forecast_rounds(cfg: PipelineConfig, settings: RoundsSettings,
                    recorded: Collection[int] = ()) -> list[RoundForecast]:
    """Each round's forecast; the rounds in `recorded` (finished before) cost nothing more."""
    from stages.split import write_subset

    _check_prompt_rows(cfg.prompts)
    out: list[RoundForecast] = []
    with tempfile.TemporaryDirectory(prefix="rounds-forecast-") as tmp:
        folder = Path(tmp)
        held = folder / "holdout.jsonl"
        if cfg.evaluate_prompts is not None:
            held.write_bytes(cfg.evaluate_prompts.read_bytes())
        elif cfg.holdout_fraction > 0:
            write_subset(cfg.prompts, held, limit=None, holdout_fraction=cfg.holdout_fraction, side="holdout")
        ab_judge = dataclasses.replace(cfg.evaluate_judge, swap_check=True, min_confidence=None)
        for k in range(1, settings.count + 1):
            offset = (k - 1) * (cfg.limit or 0) if settings.prompts == "fresh" else 0
            part = folder / f"round-{k}.jsonl"
            rows, _ = write_subset(cfg.prompts, part, limit=cfg.limit, holdout_fraction=cfg.holdout_fraction,
                                   side="sample", offset=offset)
            if k in recorded:
                out.append(RoundForecast(round=k, prompts=rows, judge_requests=0, ab_requests=0, cost_usd=0.0,
                                         cost_max_usd=0.0, recorded=True))
                continue
            judge = _estimate(part, folder / f"round-{k}-completions.jsonl", cfg.generate.n,
                              cfg.generate.max_tokens, cfg.judge)
            if not held.is_file():  # no hold-out: the A/B runs on the split's val share of the round's prompts
                share = max(1, math.ceil(cfg.split.val_fraction * rows)) if rows else 0
                lines = part.read_bytes().splitlines(keepends=True)[:share]
                (folder / f"round-{k}-val.jsonl").write_bytes(b"".join(lines))
            prompts_ab = held if held.is_file() else folder / f"round-{k}-val.jsonl"
            ab = _estimate(prompts_ab, folder / f"round-{k}-ab.jsonl", 2, cfg.generate.max_tokens, ab_judge)
            ab_runs = 1 if k == 1 else 2
            out.append(RoundForecast(
                round=k, prompts=rows, judge_requests=judge.requests, ab_requests=ab.requests * ab_runs,
                cost_usd=round(judge.cost_usd + ab.cost_usd * ab_runs, 6),
                cost_max_usd=round(judge.cost_max_usd + ab.cost_max_usd * ab_runs, 6),
                stages=tuple(forecast_stages(cfg, rows, judge, ab.rows, ab, ab_runs))))
    return out


def _check_prompt_rows(prompts: Path) -> None:
    """Every line of the prompt file is a row the generate stage takes, or PipelineConfigError names each bad one
    as `file:line: problem` (the stage's own check and wording): the forecast reads copies, which name no line."""
    problems = []
    with open(prompts, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.removeprefix(BOM) if lineno == 1 else raw
            if line.strip():
                parsed = parse_line(str(prompts), lineno, line.rstrip(b"\r\n"), validate_prompt_row)
                if isinstance(parsed, Reject):
                    problems.append(parsed.where)
    if problems:
        shown = "\n  ".join(problems[:PROBLEMS_SHOWN])
        more = f"\n  ... and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
        raise PipelineConfigError(f"{len(problems)} invalid prompt row(s); nothing was forecast or sent:\n  "
                                  f"{shown}{more}\nFix or remove these lines (a run would set them aside in the "
                                  "generate stage's rejects file).")


def _estimate(prompts: Path, out: Path, n: int, max_tokens: int, settings: Any) -> Estimate:
    """The judge's estimate over stand-in rows for `prompts`: on every row, or on SAMPLE_ROWS evenly spaced ones
    scaled up to all (a 100k-row file would otherwise write gigabytes of stand-in completions)."""
    lines = [line for line in prompts.read_bytes().splitlines() if line.strip()]
    step = max(1, len(lines) / SAMPLE_ROWS)
    sample = [lines[int(i * step)] for i in range(min(len(lines), SAMPLE_ROWS))]
    e = estimate(_stand_in(sample, out, n, max_tokens), settings)
    if len(sample) == len(lines) or not sample:
        return e
    f = len(lines) / len(sample)
    return dataclasses.replace(
        e, rows=round(e.rows * f), rows_to_judge=round(e.rows_to_judge * f), requests=round(e.requests * f),
        tokens_in=round(e.tokens_in * f), tokens_cached=round(e.tokens_cached * f), tokens_out=round(e.tokens_out * f),
        tokens_out_max=round(e.tokens_out_max * f), cost_usd=e.cost_usd * f, cost_max_usd=e.cost_max_usd * f,
        skipped={why: round(c * f) for why, c in e.skipped.items()},
        notes=[*e.notes, f"scaled from {len(sample):,} evenly spaced rows of {len(lines):,}"])


def _stand_in(lines: list[bytes], out: Path, n: int, max_tokens: int) -> Path:
    """Each prompt row with `n` distinct completions of `max_tokens` tokens' worth of characters."""
    length = int(max_tokens * CHARS_PER_TOKEN)
    with open(out, "wb") as dst:
        for line in lines:
            row: dict[str, Any] = orjson.loads(line.removeprefix(BOM))  # rows checked: _check_prompt_rows
            texts = [(f"[JERRY] sample {i} " + "x" * length)[:length] for i in range(n)]
            dst.write(orjson.dumps({"prompt": row["prompt"], "completions": texts,
                                    "reference": row.get("completion") or texts[0]}) + b"\n")
    return out


def render_forecast(forecast: list[RoundForecast]) -> str:
    """The table, one row per round and a total of what is left (recorded rounds are done: $0 more)."""
    lines = ["| round | prompts | judge requests | A/B requests | expected | at most |", "|---|---|---|---|---|---|"]
    for f in forecast:
        if f.recorded:
            lines.append(f"| {f.round} | done (recorded): nothing more to pay | - | - | $0.00 | $0.00 |")
            continue
        lines.append(f"| {f.round} | {f.prompts} | {f.judge_requests} | {f.ab_requests} | ${f.cost_usd:,.2f} | "
                     f"${f.cost_max_usd:,.2f} |")
    left = [f for f in forecast if not f.recorded]
    label = f"all {len(forecast)}" if len(left) == len(forecast) else f"left: {len(left)} of {len(forecast)}"
    lines.append(f"| {label} | {sum(f.prompts for f in left)} | {sum(f.judge_requests for f in left)} | "
                 f"{sum(f.ab_requests for f in left)} | ${sum(f.cost_usd for f in left):,.2f} | "
                 f"${sum(f.cost_max_usd for f in left):,.2f} |")
    return "\n".join(lines)
