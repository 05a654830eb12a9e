"""How long each stage of a round takes and what it costs, before anything runs: `run --estimate`'s second table.

Per stage: requests, tokens, dollars and hours. Dollars come from the judge's own estimate (stages/judge/estimate.py)
and the GPU hours below; hours from the rate that binds:
- sampling: tokens over the replicas' throughput (Modal: as many replicas as the concurrency fills, up to
  deploy.scale.sample_max_containers), plus a start;
- live judging: the least of the tier's requests per minute, its tokens per minute (counted at admission: prompt
  plus max_completion_tokens) and what the concurrency gets through at an answer's latency;
- batch judging: turns of the Batch queue (its enqueued-token cap), each assumed to take an hour (24 h at most);
- training: optimizer steps times seconds per step (training/step_times.json: measured where marked so,
  `bench/dpo_gpu_bench.py --record` fills it).
Every figure that is an assumption, not a measurement, says so in its `basis`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serving.scale import REPLICA_USD_PER_HOUR

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from stages.judge.estimate import Estimate

STEP_TIMES = Path(__file__).resolve().parent.parent / "training" / "step_times.json"
BATCH_TURN_HOURS = 1.0  # assumed: one Batch queue turn (a chunk validated, run, finalised); the window is 24 h
ANSWER_LATENCY_S = {"minimal": 5.0, "low": 20.0, "medium": 45.0, "high": 90.0}  # assumed GPT-5 seconds per answer
OFFLINE_ROWS_PER_S = 500.0  # the offline rubric (measured order of magnitude: a few ms per row)


@dataclass(frozen=True)
class Rates:
    """What a target's sampling and training run at, and what each basis rests on."""

    sample_tokens_per_s: float  # per replica
    sample_basis: str
    replica_usd_per_hour: float
    start_s: float  # a server start (Modal: a cold start with the weights on the cache volume)
    gpu: str  # the training table's `gpu`
    model: str  # the training table's `model`
    train_usd_per_hour: float


RATES = {
    "modal": Rates(2_000.0, "assumed ~2,000 tokens/s per L4 replica (vLLM, 3B bf16 + LoRA, ~150 sequences; "
                   "not measured)", REPLICA_USD_PER_HOUR, 180.0, "L4", "llama-3.2-3b", REPLICA_USD_PER_HOUR),
    "local": Rates(144.0, "measured 144 tokens/s (make run, 2 cores, 2026-12-07)", 0.0, 40.0, "cpu",
                   "smollm2-135m", 0.0),
}


@dataclass(frozen=True)
class StageForecast:
    stage: str
    requests: int
    tokens: int
    usd: float
    hours: float
    basis: str


def step_seconds(gpu: str, model: str, batch: int, max_length: int) -> tuple[float, str]:
    """(seconds per micro-step, its source) from training/step_times.json: the entry for this GPU and model with the
    nearest setup, scaled by the tokens per micro-step when its batch or length differ."""
    entries = [e for e in json.loads(STEP_TIMES.read_text())["entries"] if e["gpu"] == gpu and e["model"] == model]
    if not entries:
        raise ValueError(f"{STEP_TIMES} has no entry for gpu {gpu!r} and model {model!r}: add one (or run "
                         "bench/dpo_gpu_bench.py --record on that GPU)")
    best = min(entries, key=lambda e: abs(e["batch"] * e["max_length"] - batch * max_length))
    scale = (batch * max_length) / (best["batch"] * best["max_length"])
    kind = "measured" if best["measured"] else "assumed, not measured"
    scaled = "" if scale == 1 else f", scaled x{scale:.2f} to batch {batch} x {max_length}"
    return best["seconds_per_microstep"] * scale, f"{kind}: {best['source']}{scaled}"


def _judge_hours(cfg: PipelineConfig, e: Estimate, runs: int = 1) -> tuple[float, str]:
    from stages.judge.backends import backend_of

    judge, options = cfg.judge, cfg.judge_run
    if not backend_of(judge).sends_requests:
        return e.rows * runs / OFFLINE_ROWS_PER_S / 3600, "offline rubric: no requests"
    if not e.requests:
        return 0.0, "nothing to judge"
    if judge.mode == "batch":
        turns = max(1, math.ceil(e.tokens_in * runs / judge.batch_max_enqueued_tokens))
        return turns * BATCH_TURN_HOURS, (f"{turns} turn(s) of the {judge.batch_max_enqueued_tokens:,}-token Batch "
                                          f"queue, assumed {BATCH_TURN_HOURS:g} h each (24 h at most each)")
    admitted = e.tokens_in / e.requests + judge.max_completion_tokens
    latency = ANSWER_LATENCY_S.get(judge.reasoning_effort, 20.0)
    limits = {"concurrency": options.concurrency * 60 / latency}
    if options.rpm:
        limits["rpm"] = options.rpm
    if options.tpm:
        limits["tpm"] = options.tpm / admitted
    binding = min(limits, key=lambda k: limits[k])
    why = {"concurrency": f"concurrency {options.concurrency} at an assumed {latency:g} s per answer",
           "rpm": f"{options.rpm or 0:,.0f} requests/min", "tpm": f"{options.tpm or 0:,.0f} tokens/min at "
           f"{admitted:,.0f} admitted per request"}[binding]
    return e.requests * runs / limits[binding] / 60, f"bound by {why}"


def _sample(cfg: PipelineConfig, rates: Rates, prompts: int, n: int, replicas: int, stage: str,
            which: str) -> StageForecast:
    tokens = prompts * n * cfg.generate.max_tokens  # at most: every completion at max_tokens
    hours = (rates.start_s + tokens / (replicas * rates.sample_tokens_per_s)) / 3600
    return StageForecast(stage, prompts, tokens, replicas * hours * rates.replica_usd_per_hour, hours,
                         f"{which}: {replicas} replica(s); {rates.sample_basis}; tokens at max_tokens (at most)")


def forecast_stages(cfg: PipelineConfig, prompts: int, judge: Estimate, ab_prompts: int, ab: Estimate,
                    ab_runs: int) -> list[StageForecast]:
    """One round's stages in the order they run: sampling, judging, training, deploy, the A/B."""
    from training.config import DPOTrainConfig

    rates = RATES[cfg.profile]
    scale = cfg.deploy.scale
    filling = max(1, math.ceil(cfg.generate_run.concurrency / scale.target_inputs))
    replicas = min(scale.sample_max_containers, filling) if rates.replica_usd_per_hour else 1
    out = [_sample(cfg, rates, prompts, cfg.generate.n, replicas, "sample", "sampling's bound")]

    hours, basis = _judge_hours(cfg, judge)
    out.append(StageForecast("judge", judge.requests, judge.tokens_in + judge.tokens_out, judge.cost_usd, hours,
                             basis))

    train = (DPOTrainConfig.cpu_test(**cfg.train) if rates.gpu == "cpu"
             else DPOTrainConfig.from_overrides(cfg.train, data_dir="/forecast"))
    pairs = math.floor(judge.rows_to_judge * (1 - cfg.split.val_fraction))
    per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps
    steps = train.max_steps if train.max_steps > 0 else math.ceil(pairs * train.num_train_epochs / per_step)
    micro, source = step_seconds(rates.gpu, rates.model, train.per_device_train_batch_size, train.max_length)
    hours = (rates.start_s + steps * train.gradient_accumulation_steps * micro) / 3600
    out.append(StageForecast("train", steps, steps * per_step * 2 * train.max_length,
                             hours * rates.train_usd_per_hour, hours, f"{steps} steps x "
                             f"{train.gradient_accumulation_steps} x {micro:.1f} s ({source})"))

    out.append(StageForecast("deploy", 0, 0, rates.start_s / 3600 * rates.replica_usd_per_hour, rates.start_s / 3600,
                             f"a server start, assumed {rates.start_s:.0f} s"))
    out.append(_sample(cfg, rates, ab_prompts * ab_runs, 2, scale.max_containers if rates.replica_usd_per_hour else 1,
                       "A/B sample", "the A/B's bound"))
    hours, basis = _judge_hours(cfg, ab, ab_runs)
    out.append(StageForecast("A/B judge", ab.requests * ab_runs, (ab.tokens_in + ab.tokens_out) * ab_runs,
                             ab.cost_usd * ab_runs, hours, basis))
    return out


def render_stages(stages: list[StageForecast]) -> str:
    lines = ["| stage | requests | tokens | dollars | hours | basis |", "|---|---|---|---|---|---|"]
    for s in stages:
        lines.append(f"| {s.stage} | {s.requests:,} | {s.tokens:,} | ${s.usd:,.2f} | {s.hours:,.2f} | {s.basis} |")
    lines.append(f"| total | {sum(s.requests for s in stages):,} | {sum(s.tokens for s in stages):,} | "
                 f"${sum(s.usd for s in stages):,.2f} | {sum(s.hours for s in stages):,.2f} | stages run one after "
                 "another |")
    return "\n".join(lines)
