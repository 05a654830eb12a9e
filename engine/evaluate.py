"""The evaluate stage: did DPO make the model better? A judged A/B of two served models on held-out prompts.

1. sample: each prompt once from the baseline ("seinfeld") and once from the challenger ("seinfeld-dpo"),
   with the same settings and seed: the generate stage, twice (resumable, rate-limited, same records);
2. pair: each prompt both answered becomes `{prompt, reference, completions: [baseline, challenger]}`;
3. judge: the judge stage with the swap check on, so every pair is judged in both orders (A/B and B/A);
   resume, --max-cost, bad input and error records are the judge stage's own. It starts once every prompt
   has both answers (the judge resumes only against an unchanged input file);
4. tally (engine/evaluate_tally.py): a win or a loss only when both orders agree, else a tie.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.checkpoint import read_records
from engine.errors import ConfigError
from engine.evaluate_tally import EvalResult, tally, write_result
from engine.generate import GenerateSettings, run_generate
from engine.judge import run_judge
from engine.judge.settings import JudgeSettings
from engine.options import RunOptions
from engine.summary import StageSummary

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"


@dataclass(frozen=True)
class EvaluateSettings:
    """Which two served models are compared, and what the result must show."""

    baseline: str = field(default="seinfeld", metadata={"help": "the model DPO started from (SFT)"})
    challenger: str = field(default="seinfeld-dpo", metadata={"help": "the model under test (DPO)"})
    worst_losses: int = field(default=3, metadata={"help": "losses quoted in the report for a person to read"})
    min_win_rate: float | None = field(
        default=None,
        metadata={"help": "gate: fail when the lower end of the 95% interval of the win rate over all pairs "
                  "(ties count half) is below this; None: no gate"},
    )

    def __post_init__(self) -> None:
        if not self.baseline or not self.challenger or self.baseline == self.challenger:
            raise ConfigError(
                f"baseline and challenger must be two different served model names; got {self.baseline!r} "
                f"and {self.challenger!r}"
            )
        if self.worst_losses < 0:
            raise ConfigError(f"worst_losses must be >= 0; got {self.worst_losses}")
        if self.min_win_rate is not None and not 0 <= self.min_win_rate <= 1:
            raise ConfigError(f"min_win_rate must be in [0, 1] or unset; got {self.min_win_rate}; try 0.5")


@dataclass(frozen=True)
class EvalRun:
    """What one `run_evaluate` did: the stages' summaries and the tally over everything judged so far."""

    result: EvalResult
    samples: dict[str, StageSummary]  # by model name
    judge: StageSummary | None  # None when nothing could be paired yet
    unpaired: int  # prompts not yet answered by both models (a rerun does them)

    @property
    def exit_code(self) -> int:
        """The worst of the stages (0 done, 1 rows left or failed, 2 bad input, 130 interrupted)."""
        codes = [s.exit_code for s in self.samples.values()]
        codes.append(self.judge.exit_code if self.judge is not None else 1)
        if 130 in codes:
            return 130
        return max(max(codes), 1 if self.unpaired else 0)


async def run_evaluate(
    prompts: Path,
    out_dir: Path,
    settings: EvaluateSettings,
    generate: GenerateSettings,
    judge: JudgeSettings,
    options: RunOptions,
    *,
    serve_api_key: str | None = None,
    judge_api_key: str | None = None,
    judge_options: RunOptions | None = None,
) -> EvalRun:
    """Sample both models, pair, judge in both orders and tally into out_dir/result.json + report.md."""
    out_dir = Path(out_dir)
    samples, paired, unpaired = await sample_and_pair(prompts, out_dir, settings, generate, options,
                                                      serve_api_key=serve_api_key)
    pairs_path = out_dir / PAIRS_FILE
    judge_summary = None
    sampled = all(s.exit_code == 0 for s in samples.values()) and len(samples) == 2 and not unpaired
    if not sampled:
        # The judge resumes only against the same input file, so it waits for the complete set of pairs:
        # judging part of them now would make the rerun's larger pairs.jsonl a different input.
        log.warning("sampling left prompts without both answers (%d unpaired); not judging yet: rerun to finish "
                    "sampling, then the pairs are judged", unpaired)
    elif paired:
        both_orders = dataclasses.replace(judge, swap_check=True, min_confidence=None)
        judge_summary = await run_judge(pairs_path, out_dir / "judge", both_orders, judge_options or options,
                                        api_key=judge_api_key)
    result = tally(out_dir / "judge", settings, pairs_path)
    write_result(out_dir, result)
    log.info("%s", result.headline())
    return EvalRun(result=result, samples=samples, judge=judge_summary, unpaired=unpaired)


async def sample_and_pair(
    prompts: Path,
    out_dir: Path,
    settings: EvaluateSettings,
    generate: GenerateSettings,
    options: RunOptions,
    *,
    serve_api_key: str | None = None,
) -> tuple[dict[str, StageSummary], int, int]:
    """Steps 1 and 2: both models' samples, then out_dir/pairs.jsonl; (summaries, pairs, prompts unpaired)."""
    samples: dict[str, StageSummary] = {}
    for model in (settings.baseline, settings.challenger):
        per_model = dataclasses.replace(generate, model=model, n=1)  # one continuation each, same seed
        samples[model] = await run_generate(prompts, out_dir / "samples" / model, per_model, options,
                                            api_key=serve_api_key)
        if samples[model].interrupted:
            return samples, 0, 0
    paired, unpaired = write_pairs(out_dir / PAIRS_FILE, [samples[m] for m in (settings.baseline, settings.challenger)])
    return samples, paired, unpaired


def write_pairs(path: Path, summaries: list[StageSummary]) -> tuple[int, int]:
    """Join both models' samples by row id into the judge's input; (pairs written, prompts left unpaired).

    Rebuilt from the two checkpoints on every run (atomically), in the baseline's order, so it is the same
    file whenever the same rows are done: the judge resumes against it.
    """
    baseline, challenger = (_by_id(s.output) for s in summaries)
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with tmp.open("wb") as f:
        for row_id, row in baseline.items():
            other = challenger.get(row_id)
            if other is None:
                continue
            pair: dict[str, Any] = {"id": row_id, "prompt": row["prompt"],
                                    "completions": [row["completions"][0], other["completions"][0]],
                                    "models": [row.get("model"), other.get("model")]}
            if row.get("reference") is not None:
                pair["reference"] = row["reference"]
            f.write(orjson.dumps(pair) + b"\n")
            written += 1
    tmp.replace(path)
    unpaired = len(set(baseline) ^ set(challenger))
    return written, unpaired


def _by_id(path: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in read_records(path) if row.get("completions")}
