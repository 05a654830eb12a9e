"""The evaluate stage: did DPO make the model better? A judged A/B of two served models on held-out prompts.

1. sample: each prompt once from the baseline ("seinfeld") and once from the challenger ("seinfeld-dpo"),
   with the same settings and seed: the generate stage, twice (resumable, rate-limited, same records);
2. pair: each prompt both answered becomes `{prompt, reference, completions: [baseline, challenger]}`;
   a prompt a model answered only blank after its resamples (stages.generate.EMPTY_ANSWERS: the same seeds
   draw the same blanks on a rerun) is final, never asked again, and becomes a forfeit in forfeits.jsonl,
   decided without the judge: a loss for the model that could not answer, a tie when neither could;
3. judge: the judge stage with the swap check on, so every pair is judged in both orders (A/B and B/A);
   resume, --max-cost, bad input and error records are the judge stage's own. It starts once every prompt
   is final for both models, answered or forfeited (the judge resumes only against an unchanged input file);
   a prompt that failed otherwise (HTTP error, timeout) waits for a rerun, which asks again;
4. tally (stages/evaluate/tally.py): a win or a loss only when both orders agree, else a tie; forfeits count. The
   raw win rate and the length-controlled one (stages/evaluate/length.py), and the judge's reliability ledger.
   Only a complete tally (every prompt final for both models, every pair judged) is a verdict: an interrupted
   or failed-in-part run leaves `complete` False and `passed` None, and a rerun resumes, then decides.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.checkpoint import atomic_write, read_records
from engine.errors import ConfigError
from engine.options import RunOptions
from engine.summary import StageSummary
from stages.evaluate.tally import EvalResult, tally, write_result
from stages.generate import EMPTY_ANSWERS, GenerateSettings, run_generate
from stages.judge import run_judge
from stages.judge.settings import JudgeSettings

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
FORFEITS_FILE = "forfeits.jsonl"
GATE_ON = ("raw", "lc")  # the win rates the gate can read: as judged, or length-controlled
# Settings that only change how the tally reads the judged files: kept out of the A/B folder's key
# (steps/evaluate.py), so changing one re-tallies the same samples and judgments instead of paying for new ones.
TALLY_ONLY = ("gate_on", "max_flip_rate", "max_longer_wins")


@dataclass(frozen=True)
class EvaluateSettings:
    """Which two served models are compared, and what the result must show."""

    baseline: str = field(default="seinfeld", metadata={"help": "the model DPO started from (SFT)"})
    challenger: str = field(default="seinfeld-dpo", metadata={"help": "the model under test (DPO)"})
    worst_losses: int = field(default=3, metadata={"help": "losses quoted in the report for a person to read"})
    min_win_rate: float | None = field(
        default=None,
        metadata={"help": "gate: fail when the lower end of the 95% interval of the win rate over all pairs "
                  "(ties count half; the one `gate_on` names) is below this; None: no gate"},
    )
    gate_on: str = field(
        default="raw",
        metadata={"help": "the win rate the gate reads: raw (the judge's verdicts as they are) or lc "
                  "(length-controlled: the verdict predicted at equal answer length, stages/evaluate/length.py)"},
    )
    max_flip_rate: float | None = field(
        default=0.3,
        metadata={"help": "the report warns (never fails) when the judge's verdict flips with the order shown in "
                  "more than this share of the pairs judged in both orders; None: no warning"},
    )
    max_longer_wins: float | None = field(
        default=0.75,
        metadata={"help": "the report warns (never fails) when the longer text wins more than this share of the "
                  "decided pairs that differ in length (length bias); None: no warning"},
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
        if self.gate_on not in GATE_ON:
            raise ConfigError(f"gate_on must be one of {', '.join(GATE_ON)}; got {self.gate_on!r}")
        for name in ("max_flip_rate", "max_longer_wins"):
            bound = getattr(self, name)
            if bound is not None and not 0 <= bound <= 1:
                raise ConfigError(f"{name} must be in [0, 1] or null (no warning); got {bound}")


@dataclass(frozen=True)
class Pairing:
    """How the prompts stand after sampling both models."""

    pairs: int = 0  # answered by both: the judge's input
    forfeits: int = 0  # answered only blank by one model or both: decided without the judge
    unpaired: int = 0  # not final for both yet (failed otherwise, or not reached): a rerun does them


@dataclass(frozen=True)
class EvalRun:
    """What one `run_evaluate` did: the stages' summaries and the tally over everything judged so far."""

    result: EvalResult
    samples: dict[str, StageSummary]  # by model name
    judge: StageSummary | None  # None when nothing could be judged yet, or nothing needs the judge
    pairing: Pairing

    @property
    def unpaired(self) -> int:
        """Prompts not yet final for both models (a rerun does them)."""
        return self.pairing.unpaired

    @property
    def exit_code(self) -> int:
        """The worst of the stages (0 done, 1 rows left or failed, 2 bad input, 130 interrupted)."""
        codes = [s.exit_code for s in self.samples.values()]
        if self.judge is not None:
            codes.append(self.judge.exit_code)
        elif self.pairing.pairs or len(self.samples) < 2:
            codes.append(1)  # pairs waiting for the judge, or a model not sampled yet
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
    sample_dirs: Mapping[str, Path] | None = None,
) -> EvalRun:
    """Sample both models, pair, judge in both orders and tally into out_dir/result.json + report.md.

    `sample_dirs` (model -> folder) puts a model's samples elsewhere than out_dir/samples/<model>: a folder the
    caller keys by what defines them (the model's identity, the sampling settings), so an unchanged baseline is
    sampled once and shared by every A/B against it (reruns, rounds, other DPO adapters)."""
    out_dir = Path(out_dir)
    samples, pairing = await sample_and_pair(prompts, out_dir, settings, generate, options,
                                             serve_api_key=serve_api_key, sample_dirs=sample_dirs)
    pairs_path = out_dir / PAIRS_FILE
    judge_summary = None
    sampled = all(s.exit_code == 0 for s in samples.values()) and len(samples) == 2 and not pairing.unpaired
    if not sampled:
        # The judge resumes only against the same input file, so it waits for the complete set of pairs:
        # judging part of them now would make the rerun's larger pairs.jsonl a different input.
        log.warning("sampling left prompts without both answers (%d unpaired); not judging yet: rerun to finish "
                    "sampling, then the pairs are judged", pairing.unpaired)
    elif pairing.pairs:
        both_orders = dataclasses.replace(judge, swap_check=True, min_confidence=None)
        judge_summary = await run_judge(pairs_path, out_dir / "judge", both_orders, judge_options or options,
                                        api_key=judge_api_key)
    if pairing.forfeits:
        log.warning("%d prompt(s) a model answered only blank: decided without the judge (see %s)",
                    pairing.forfeits, out_dir / FORFEITS_FILE)
    result = tally(out_dir / "judge", settings, pairs_path, out_dir / FORFEITS_FILE, sampled=sampled)
    write_result(out_dir, result)
    log.info("%s", result.headline())
    for line in ([result.disagree] if result.disagree else []) + result.warnings:
        log.warning("%s", line)
    return EvalRun(result=result, samples=samples, judge=judge_summary, pairing=pairing)


async def sample_and_pair(
    prompts: Path,
    out_dir: Path,
    settings: EvaluateSettings,
    generate: GenerateSettings,
    options: RunOptions,
    *,
    serve_api_key: str | None = None,
    sample_dirs: Mapping[str, Path] | None = None,
) -> tuple[dict[str, StageSummary], Pairing]:
    """Steps 1 and 2: both models' samples, then out_dir/pairs.jsonl and out_dir/forfeits.jsonl."""
    samples: dict[str, StageSummary] = {}
    for model in (settings.baseline, settings.challenger):
        per_model = dataclasses.replace(generate, model=model, n=1)  # one continuation each, same seed
        folder = Path((sample_dirs or {}).get(model) or out_dir / "samples" / model)
        samples[model] = await run_generate(prompts, folder, per_model, options,
                                            api_key=serve_api_key, forfeit_empty=True)
        if samples[model].interrupted:
            return samples, Pairing()
    pairing = write_pairs(out_dir, [samples[m] for m in (settings.baseline, settings.challenger)])
    return samples, pairing


def write_pairs(out_dir: Path, summaries: list[StageSummary]) -> Pairing:
    """Join both models' samples by row id: the judge's input (pairs.jsonl) and the forfeits (forfeits.jsonl).

    Both rebuilt from the two checkpoints on every run (atomically), in the baseline's order, so each is the
    same file whenever the same rows are done: the judge resumes against pairs.jsonl.
    """
    (base, base_blank), (chal, chal_blank) = (_final(s.output) for s in summaries)
    pairs, forfeits = [], []
    for row_id, row in {**base, **base_blank}.items():
        other = chal.get(row_id) or chal_blank.get(row_id)
        if other is None:
            continue  # the challenger's row is not final yet
        record: dict[str, Any] = {"id": row_id, "prompt": row["prompt"],
                                  "completions": [_text(row), _text(other)],
                                  "models": [row.get("model"), other.get("model")]}
        if row.get("reference") is not None:
            record["reference"] = row["reference"]
        blank = [r for r in (row, other) if r.get("reason") == EMPTY_ANSWERS]
        if not blank:
            pairs.append(record)
            continue
        record["forfeit"] = "both" if len(blank) == 2 else "baseline" if blank[0] is row else "challenger"
        record["reason"] = "; ".join(r.get("problem") or EMPTY_ANSWERS for r in blank)
        forfeits.append(record)
    for name, records in ((PAIRS_FILE, pairs), (FORFEITS_FILE, forfeits)):
        atomic_write(out_dir / name, b"".join(orjson.dumps(r) + b"\n" for r in records))
    seen = set(base) | set(base_blank) | set(chal) | set(chal_blank)
    for summary in summaries:  # rows that failed for both models are in neither model's finished files
        seen |= {r["id"] for r in read_records(summary.output.with_suffix(".errors.jsonl")) if "id" in r}
    return Pairing(pairs=len(pairs), forfeits=len(forfeits), unpaired=len(seen) - len(pairs) - len(forfeits))


def _final(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """A model's finished rows by id: answered (completions.jsonl), and answered only blank (its skipped file)."""
    answered = {row["id"]: row for row in read_records(path) if row.get("completions")}
    blank = {row["id"]: row for row in read_records(path.with_suffix(".skipped.jsonl"))
             if row.get("reason") == EMPTY_ANSWERS and row["id"] not in answered}
    return answered, blank


def _text(row: dict[str, Any]) -> str | None:
    """The row's answer, None for a row answered only blank."""
    return row["completions"][0] if row.get("reason") != EMPTY_ANSWERS and row.get("completions") else None

