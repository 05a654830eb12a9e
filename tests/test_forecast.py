"""`run --estimate`: hours and dollars per stage, from the bounds that bind (replicas, the tier's limits, steps
times seconds per step), for a prompt file of 100k rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orjson
import pytest
import yaml

from pipelines.config import load_config
from pipelines.forecast import STEP_TIMES, step_seconds
from pipelines.rounds_cost import forecast_rounds
from serving.scale import REPLICA_USD_PER_HOUR
from tests.helpers import ROOT

BRIEF = "You are a writer for the TV show Seinfeld. Continue the scene with natural dialogue."


def _prompts(path: Path, n: int) -> Path:
    row = {"prompt": [{"role": "system", "content": BRIEF}, {"role": "user", "content": "[JERRY] Scene {i}: so?"}],
           "completion": [{"role": "assistant", "content": "[GEORGE] I don't know."}]}
    text = orjson.dumps(row).decode()
    path.write_text("".join(text.replace("{i}", str(i)) + "\n" for i in range(n)))
    return path


def _config(tmp_path: Path, prompts: Path, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())
    raw["prompts"] = str(prompts)
    for section, values in changes.items():
        raw[section] = {**(raw.get(section) or {}), **values}
    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return _prompts(tmp_path_factory.mktemp("forecast") / "prompts.jsonl", 100_000)


def _stages(tmp_path, prompts, **changes) -> dict:
    cfg = load_config(config_file=_config(tmp_path, prompts, **changes), env={})
    (round1,) = forecast_rounds(cfg, cfg.rounds)
    return {s.stage: s for s in round1.stages}, cfg, round1


def test_the_cli_prints_hours_and_dollars_per_stage_for_100k_prompts(tmp_path, big, capsys):
    from pipelines.dpo import main

    assert main(["run", "--config", str(_config(tmp_path, big)), "--estimate"]) == 0
    err = capsys.readouterr().err
    table = err[err.index("| stage | requests | tokens | dollars | hours |"):]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:] if line.startswith("|")}
    assert {"sample", "judge", "train", "deploy", "A/B sample", "A/B judge", "total"} <= set(rows)
    assert "| 100,000 |" in rows["sample"] and "assumed" in rows["sample"] and "assumed" in rows["train"]
    assert "note: judge.max_cost_usd $50.00 stops the judge after about" in err  # 100k rows cost far more


def test_sampling_hours_follow_the_replica_bound_and_judging_the_tier(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.rounds_cost.SAMPLE_ROWS", 200)  # forecast on 200 rows, scaled up to all
    big = _prompts(tmp_path / "p.jsonl", 5_000)
    one, _, _ = _stages(tmp_path, big, deploy={"scale": {"max_containers": 1, "sample_max_containers": 1}})
    eight, cfg, round1 = _stages(tmp_path, big)
    assert cfg.deploy.scale.sample_max_containers == 8
    start = 180 / 3600
    assert (one["sample"].hours - start) == pytest.approx(8 * (eight["sample"].hours - start))
    # Each replica is billed while up: eight for an eighth of the time, each with its own start.
    assert eight["sample"].usd == pytest.approx(8 * eight["sample"].hours * REPLICA_USD_PER_HOUR)
    assert one["sample"].usd == pytest.approx(one["sample"].hours * REPLICA_USD_PER_HOUR)
    # Live judging at tier 1 is bound by its tokens per minute, counted as OpenAI admits them.
    judge = eight["judge"]
    assert "tokens/min" in judge.basis
    assert judge.usd == pytest.approx(round1.cost_usd - eight["A/B judge"].usd)
    tier3, _, _ = _stages(tmp_path, big, judge={"tier": 3})  # 4x the tokens: then the concurrency binds
    assert "concurrency 32" in tier3["judge"].basis
    assert tier3["judge"].hours == pytest.approx(judge.requests / (32 * 60 / 20) / 60)
    assert tier3["judge"].hours < judge.hours
    batch, _, _ = _stages(tmp_path, big, judge={"mode": "batch"})
    assert "Batch queue" in batch["judge"].basis and batch["judge"].usd == pytest.approx(judge.usd / 2, rel=0.01)


def test_training_hours_are_steps_times_the_tables_seconds_and_a_recorded_measurement_replaces_it(tmp_path,
                                                                                                monkeypatch):
    prompts = _prompts(tmp_path / "p.jsonl", 2_000)
    stages, cfg, _ = _stages(tmp_path, prompts)
    micro, source = step_seconds("L4", "llama-3.2-3b", 4, 2048)
    assert source.startswith("assumed")
    steps = stages["train"].requests
    assert stages["train"].hours == pytest.approx((180 + steps * 4 * micro) / 3600)

    from bench.dpo_gpu_bench import record

    table = tmp_path / "step_times.json"
    table.write_text(STEP_TIMES.read_text())
    out = {"device": "NVIDIA L4", "model": "llama-3.2-3b-dims", "quantization": "nf4", "batch": 4, "grad_accum": 1,
           "max_length": 2048, "timed_steps": 4, "seconds_per_step": 6.5, "peak_gpu_memory_gib": 14.2}
    record(table, out, None)
    monkeypatch.setattr("pipelines.forecast.STEP_TIMES", table)
    assert step_seconds("L4", "llama-3.2-3b", 4, 2048)[0] == 6.5
    assert step_seconds("L4", "llama-3.2-3b", 4, 2048)[1].startswith("measured: bench/dpo_gpu_bench.py on NVIDIA L4")
    assert len([e for e in json.loads(table.read_text())["entries"] if e["gpu"] == "L4"]) == 1  # replaced
    again, _, _ = _stages(tmp_path, prompts)
    assert again["train"].hours == pytest.approx((180 + steps * 4 * 6.5) / 3600)
    assert dataclasses.asdict(again["judge"]) == dataclasses.asdict(stages["judge"])
