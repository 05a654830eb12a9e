"""The rounds' rules without a model: settings, the stop rule's edges, which round keeps serving, each round's
parameters, and the refusals before anything runs (issue 19)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipelines.config import PipelineConfigError, RoundsSettings, load_config
from pipelines.rounds import (
    RoundRecord,
    best_round,
    check_rounds,
    load_record,
    round_parameters,
    save_record,
    stop_reason,
)
from pipelines.rounds_report import chart, render_table


def _ab(low: float, rate: float = 0.6, high: float = 0.8) -> dict:
    return {"wins": 10, "losses": 5, "ties": 1, "n": 16, "win_rate_all": rate, "ci95_all_low": low,
            "ci95_all_high": high, "cost_usd": 0.0}


def _record(k: int, *, vs_prev_low: float | None = None, status: str = "done", path: str = "/nowhere") -> RoundRecord:
    return RoundRecord(round=k, run_id=f"run{k}", run_name=f"dpo-local-round{k}-x", adapter_id=f"adapter{k}",
                       adapter_path=path, adapter_sha256=f"sha{k}", preferences_id=f"prefs{k}", pairs=12,
                       vs_sft=_ab(0.55), vs_previous=None if vs_prev_low is None else _ab(vs_prev_low),
                       cost_usd=0.0, status=status)


def test_the_stop_rule_fires_at_or_below_min_gain_and_not_above():
    settings = RoundsSettings(count=3)
    assert stop_reason(_record(1), settings) is None  # round 1 has no previous round to beat
    assert stop_reason(_record(2, vs_prev_low=0.5001), settings) is None
    assert "no measurable gain" in stop_reason(_record(2, vs_prev_low=0.5), settings)  # at the edge: stop
    assert "no measurable gain" in stop_reason(_record(2, vs_prev_low=0.31), settings)
    assert stop_reason(_record(2, vs_prev_low=0.41), RoundsSettings(count=3, min_gain=0.4)) is None
    assert "failed the A/B gate" in stop_reason(_record(1, status="gate_failed"), settings)


def test_the_round_kept_serving_is_the_last_that_measurably_beat_the_one_before():
    settings = RoundsSettings(count=3)
    one, two, three = _record(1), _record(2, vs_prev_low=0.56), _record(3, vs_prev_low=0.44)
    assert best_round([one], settings) is one
    assert best_round([one, two], settings) is two
    assert best_round([one, two, three], settings) is two  # round 3 did not beat round 2: round 2 serves
    assert best_round([one, _record(2, vs_prev_low=0.5)], settings) is one
    assert best_round([one, _record(2, vs_prev_low=0.7, status="gate_failed")], settings) is one
    assert best_round([_record(1, status="gate_failed")], settings) is None


def test_round_parameters_slice_the_prompts_and_chain_the_adapters():
    base = {"limit": 40, "prompt_offset": 0, "previous_adapter_id": None, "earlier_preferences_ids": ()}
    done = [_record(1), _record(2, vs_prev_low=0.6)]
    assert round_parameters(base, RoundsSettings(count=3), 1, []) == base  # round 1 is the plain run
    third = round_parameters(base, RoundsSettings(count=3), 3, done)
    assert third["prompt_offset"] == 80 and third["previous_adapter_id"] == "adapter2"
    assert third["earlier_preferences_ids"] == ()  # data: round (the default) trains on its own pairs
    everything = round_parameters(base, RoundsSettings(count=3, prompts="all", data="all"), 3, done)
    assert everything["prompt_offset"] == 0 and everything["earlier_preferences_ids"] == ("prefs1", "prefs2")


@pytest.mark.parametrize(("values", "message"), [
    ({"count": 0}, "rounds.count must be a whole number from 1 to 10"),
    ({"count": True}, "rounds.count must be a whole number"),
    ({"prompts": "some"}, "rounds.prompts must be one of fresh, all"),
    ({"data": "mine"}, "rounds.data must be one of round, all"),
    ({"min_gain": 1.0}, "rounds.min_gain must be in"),
])
def test_bad_rounds_settings_are_refused(values, message):
    with pytest.raises(PipelineConfigError, match=message):
        RoundsSettings(**values)


def test_fresh_slices_that_do_not_fit_the_prompt_file_are_refused_before_anything_runs():
    cfg = load_config(rounds=3)  # configs/local.yaml: limit 48, 200 scenes, holdout 0.4
    assert cfg.rounds.count == 3
    check_rounds(cfg, cfg.rounds)  # prompts: all, as shipped: the same 48 each round
    fresh = dataclasses.replace(cfg.rounds, prompts="fresh")
    with pytest.raises(PipelineConfigError, match=r"3 rounds of 48 prompts need 144 training prompts.*lower limit"):
        check_rounds(cfg, fresh)
    check_rounds(dataclasses.replace(cfg, limit=30), fresh)  # 90 fit
    with pytest.raises(PipelineConfigError, match="locally only"):
        check_rounds(dataclasses.replace(cfg, profile="modal"), fresh)
    with pytest.raises(PipelineConfigError, match="same held-out prompts"):
        check_rounds(dataclasses.replace(cfg, holdout_fraction=0.0, limit=30), fresh)


def test_a_record_whose_adapter_changed_is_not_trusted(tmp_path):
    from training.adapters import adapter_sha256

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    record = dataclasses.replace(_record(1, path=str(adapter)), adapter_sha256=adapter_sha256(adapter))
    save_record(tmp_path / "rounds", record)
    assert load_record(tmp_path / "rounds", 1) == record
    assert load_record(tmp_path / "rounds", 2) is None
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    assert load_record(tmp_path / "rounds", 1) is None  # the round runs again rather than chain a changed file
    assert json.loads((tmp_path / "rounds" / "round-1.json").read_text())["round"] == 1


def test_the_report_table_and_chart_show_every_round():
    records = [_record(1), _record(2, vs_prev_low=0.44)]
    table = render_table(records)
    assert table.count("\n") == 3
    assert "| 2 | done | 12 | 10 / 5 / 1 | 60.0% [55.0%, 80.0%] | 10 / 5 / 1 | 60.0% [44.0%" in table
    assert "| 1 | done | 12 | 10 / 5 / 1 | 60.0% [55.0%, 80.0%] | - | - |" in table
    assert chart(records)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_forecast_covers_every_round_before_anything_is_paid(tmp_path):
    from pipelines.rounds_cost import forecast_rounds, render_forecast

    cfg = load_config(rounds=3, limit=30)
    from engine.judge.cost import Prices

    judge = dataclasses.replace(cfg.judge, backend="openai", judge_model="gpt-5", prices=Prices(1.25, 0.125, 10.0))
    paid = dataclasses.replace(cfg, judge=judge, evaluate_judge=judge)
    forecast = forecast_rounds(paid, paid.rounds)
    assert [f.prompts for f in forecast] == [30, 30, 30]
    assert all(f.judge_requests == 30 for f in forecast)  # one 3-way ranking per prompt
    held = forecast[0].ab_requests  # the hold-out, both orders, against SFT
    assert held > 0 and forecast[1].ab_requests == forecast[2].ab_requests == 2 * held  # + against the previous
    assert forecast[1].cost_usd > forecast[0].cost_usd > 0
    total = render_forecast(forecast).splitlines()[-1]
    assert total.startswith("| all 3 | 90 | 90 |") and f"${sum(f.cost_usd for f in forecast):,.2f}" in total
    free = forecast_rounds(cfg, cfg.rounds)  # the local profile's rubric judge: nothing to pay
    assert all(f.cost_usd == 0 and f.judge_requests == 0 for f in free)


def test_run_with_max_cost_below_the_forecast_refuses_to_start(tmp_path, capsys):
    import yaml

    from pipelines.dpo import main
    from pipelines.zenml_home import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "configs" / "tiny.yaml").read_text())
    config.update(workdir=str(tmp_path / "work"), limit=4, holdout_fraction=0.3)
    config["judge"] = {"backend": "openai", "judge_url": "http://127.0.0.1:9/v1", "judge_model": "gpt-5"}
    path = tmp_path / "paid.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--rounds", "2", "--max-cost", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "over --max-cost $0.00" in err and "| all 2 | 8 | 8 |" in err
    assert not (tmp_path / "work").exists()  # nothing ran
    assert main(["run", "--config", str(path), "--rounds", "2", "--estimate"]) == 0
    assert "| 2 | 4 | 4 |" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_arena_votes_join_the_pairs_marked_by_source_and_never_on_the_prompts_the_ab_evaluates(tmp_path):
    from engine.rows import prompt_id
    from engine.split import HOLDOUT_SALT, split_value
    from steps.split import join_arena_pairs
    from tests.test_arena_units import vote, write_votes

    votes = tmp_path / "votes.jsonl"
    scenes = ["[JERRY] Hi.", "[GEORGE] The tall one?", "[ELAINE] Get out!"]
    records = [vote("left", scene=s, vote_id=f"v{i}") for i, s in enumerate(scenes)] + [vote("tie", vote_id="t")]
    write_votes(votes, records)
    judged = tmp_path / "judged.jsonl"
    judged.write_text('{"id": "j1", "prompt": "p", "chosen": "a", "rejected": "b"}\n')
    values = sorted((split_value(prompt_id(r["prompt"]), HOLDOUT_SALT), r["id"]) for r in records[:3])
    fraction = (values[0][0] + values[1][0]) / 2  # exactly the lowest-hashing scene is held out
    out = tmp_path / "out.jsonl"
    assert join_arena_pairs(judged, votes, out, holdout_fraction=fraction, evaluate_prompts=None) == (2, 1, 4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["id"] == "j1" and "source" not in rows[0]  # the judged pairs first, as they were
    assert [r["source"] for r in rows[1:]] == ["arena", "arena"]
    assert values[0][1] not in {r["id"] for r in rows}  # the held-out scene's vote is not trained on
    evaluated = tmp_path / "ab.jsonl"
    evaluated.write_text(json.dumps({"prompt": records[0]["prompt"]}) + "\n")
    assert join_arena_pairs(judged, votes, out, holdout_fraction=0.0, evaluate_prompts=evaluated)[:2] == (2, 1)
    assert "v0" not in out.read_text()
