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
    from pipelines.sections import PromptSelection, RoundInputs

    base = {"prompts": PromptSelection(file="p.jsonl", sha256="h", limit=40), "round_inputs": RoundInputs()}
    done = [_record(1), _record(2, vs_prev_low=0.6)]
    assert round_parameters(base, RoundsSettings(count=3), 1, []) == base  # round 1 is the plain run
    third = round_parameters(base, RoundsSettings(count=3), 3, done)
    assert third["prompts"].offset == 80 and third["round_inputs"].previous_adapter_id == "adapter2"
    assert third["round_inputs"].earlier_preferences_ids == ()  # data: round (the default) trains on its own pairs
    assert third["prompts"].limit == 40 and base["prompts"].offset == 0  # the base is left as it was
    everything = round_parameters(base, RoundsSettings(count=3, prompts="all", data="all"), 3, done)
    assert everything["prompts"].offset == 0
    assert everything["round_inputs"].earlier_preferences_ids == ("prefs1", "prefs2")


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
    check_rounds(dataclasses.replace(cfg, profile="modal", limit=30), fresh)  # rounds run on Modal too
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
    # a record from before issue 31 has no length-controlled rate: "-"
    assert "| 2 | done | 12 | 10 / 5 / 1 | 60.0% [55.0%, 80.0%] | - | 10 / 5 / 1 | 60.0% [44.0%" in table
    assert "| 1 | done | 12 | 10 / 5 / 1 | 60.0% [55.0%, 80.0%] | - | - | - | - |" in table
    assert chart(records)[:8] == b"\x89PNG\r\n\x1a\n"


# Issue 31: each round shows its raw and length-controlled win rates, and the judge's reliability ledger per A/B.
def test_the_report_shows_raw_and_length_controlled_rates_and_the_ledger_per_round():
    from pipelines.rounds_report import render_ledger, render_markdown

    lc = {"lc_win_rate": 0.52, "lc_ci95_low": 0.4, "lc_ci95_high": 0.64, "lc_disagrees": True, "flip_rate": 0.35,
          "tie_rate": 0.35, "longer_wins": 0.9, "human_votes": 0, "judge_warnings": 2, "judge_model": "gpt-5",
          "judge_prompt_version": "seinfeld-rank-v1-abcd1234"}
    records = [dataclasses.replace(_record(1), vs_sft={**_ab(0.55), **lc}),
               dataclasses.replace(_record(2, vs_prev_low=0.51), vs_sft={**_ab(0.55), **lc, "lc_disagrees": False})]
    table = render_table(records)
    assert "| 60.0% [55.0%, 80.0%] | 52.0% [40.0%, 64.0%] (disagrees) |" in table.splitlines()[2]
    assert "| 52.0% [40.0%, 64.0%] | 10 / 5 / 1 |" in table.splitlines()[3]
    ledger = render_ledger(records)
    assert "| 1 | vs SFT | gpt-5, seinfeld-rank-v1-abcd1234 | 35% | 35% | 90% | no votes | WARNING x2 |" in ledger
    assert "| 2 | vs previous | - | - | - | - | - | - |" in ledger  # vs previous carries no ledger figures here
    assert ledger in render_markdown(records, deployed=2, stopped="all 2 rounds ran")
    assert chart(records)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_forecast_covers_every_round_before_anything_is_paid(tmp_path):
    from pipelines.rounds_cost import forecast_rounds, render_forecast

    cfg = load_config(rounds=3, limit=30)
    from stages.judge.cost import Prices

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
    from stages.split import HOLDOUT_SALT, split_value
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


# Issue 27: a round is recorded only for a verdict. Below, ZenML and the pipeline module are stand-ins
# (sys.modules), so run_rounds' own handling runs: a failed run raises (no verdict), a finished one's gate decision
# (the promote_or_rollback step's artifact) and evaluate_adapters metadata are what it reads, as from a real run.

INCOMPLETE_AB = {"wins": 2, "losses": 0, "ties": 0, "n": 2, "ci95_all_low": 0.34, "win_rate_all": 1.0,
                 "ci95_all_high": 1.0, "cost_usd": 0.0,
                 "gate_passed": False,  # what the evaluate step logged for a partial count before issue 27
                 "complete": False}
DONE_AB = {**INCOMPLETE_AB, "n": 6, "ci95_all_low": 0.61, "gate_passed": True, "complete": True, "passed": True}
FAILED_AB = {**DONE_AB, "wins": 1, "losses": 5, "ci95_all_low": 0.03, "win_rate_all": 0.17, "gate_passed": False,
             "passed": False}


def _fake_parameters(cfg) -> dict:
    """What the rounds read of the pipeline's parameters (the prompt selection's limit, the round inputs)."""
    from pipelines.sections import PromptSelection, RoundInputs

    return {"prompts": PromptSelection(file=str(cfg.prompts), sha256="h", limit=cfg.limit),
            "round_inputs": RoundInputs(), "workdir": str(cfg.workdir)}


class _FakeZenML:
    """configured_pipeline, Client and the round's run, as run_rounds sees them; `evaluate` is the next run's
    evaluate_adapters metadata, `decision` its gate decision, `fail` whether that run fails."""

    def __init__(self) -> None:
        self.runs: list = []
        self.evaluate: dict = {}
        self.decision: dict = {"passed": True, "action": "kept"}
        self.fail = False

    def install(self, monkeypatch) -> None:
        import sys
        import types

        from pipelines import rounds

        client = types.SimpleNamespace(
            list_pipeline_runs=lambda **_: types.SimpleNamespace(items=self.runs[-1:]),
            get_pipeline_run=lambda run_id: next(r for r in self.runs if r.id == run_id))
        zenml, zenml_client = types.ModuleType("zenml"), types.ModuleType("zenml.client")
        zenml_client.Client = lambda: client
        pipeline = types.ModuleType("pipelines.pipeline")
        pipeline.pipeline_parameters = _fake_parameters
        pipeline.configured_pipeline = lambda cfg, run_name: self._launcher(run_name)
        for name, module in (("zenml", zenml), ("zenml.client", zenml_client), ("pipelines.pipeline", pipeline)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(rounds, "_record", self._record)
        monkeypatch.setattr(rounds, "_serve_round", lambda cfg, record: None)
        monkeypatch.setattr("pipelines.rounds_report.write_report", lambda *a, **k: None)

    def _launcher(self, run_name: str):
        import types

        def launch(**params):
            k = int(run_name.split("-round")[1].split("-")[0])
            decision = types.SimpleNamespace(load=lambda d=dict(self.decision): d)
            run = types.SimpleNamespace(id=f"id{len(self.runs)}", name=f"dpo-local-round{k}-{len(self.runs)}",
                                        steps={"evaluate_adapters": types.SimpleNamespace(
                                            run_metadata=dict(self.evaluate)),
                                            "promote_or_rollback": types.SimpleNamespace(
                                                outputs={"gate_decision": [decision]})})
            self.runs.append(run)
            if self.fail:
                raise RuntimeError("Pipeline run has failed due to failure in step(s): evaluate_adapters")
            return run
        return launch

    @staticmethod
    def _record(client, run, k: int, status: str = "done", rolled_back: str | None = None) -> RoundRecord:
        from pipelines.rounds import _ab_numbers, _step_metadata

        vs_sft = {**_ab_numbers(_step_metadata(run, "evaluate_adapters")),
                  **({"rolled_back": rolled_back} if rolled_back else {})}
        return dataclasses.replace(_record(k, status=status, vs_prev_low=0.4 if status == "done" else None),
                                   run_name=run.name, vs_sft=vs_sft)


@pytest.fixture
def rounds_setup(tmp_path, monkeypatch):
    """Two rounds on the local config in tmp_path, round 1 recorded as finished; the fake ZenML installed."""
    from pipelines.rounds import rounds_dir
    from training.adapters import adapter_sha256

    cfg = dataclasses.replace(load_config(rounds=2), workdir=tmp_path / "work")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    folder = rounds_dir(cfg, cfg.rounds, _fake_parameters(cfg))
    save_record(folder, dataclasses.replace(_record(1, path=str(adapter)), adapter_sha256=adapter_sha256(adapter)))
    fake = _FakeZenML()
    fake.install(monkeypatch)
    return cfg, folder, fake


@pytest.mark.parametrize("how", ["interrupted", "one_request_failed"])
def test_an_incomplete_ab_is_not_recorded_and_the_rerun_resumes_and_decides(rounds_setup, how):
    from pipelines.rounds import run_rounds

    cfg, folder, fake = rounds_setup
    # Ctrl-C in the A/B (the stage stops at exit 130) or one failed request (exit 1): the evaluate step logged
    # its counts so far and failed; both are a partial count, no verdict.
    fake.evaluate, fake.fail = dict(INCOMPLETE_AB, n=1 if how == "interrupted" else 5), True
    with pytest.raises(RuntimeError, match="evaluate_adapters"):
        run_rounds(cfg, cfg.rounds)
    assert not (folder / "round-2.json").exists()  # no record: the rerun runs round 2 again, not skips it
    fake.evaluate, fake.fail = DONE_AB, False  # the rerun: the A/B resumes from its checkpoints and completes
    outcome = run_rounds(cfg, cfg.rounds)
    assert outcome.ran == [2] and [r.status for r in outcome.rounds] == ["done", "done"]
    assert json.loads((folder / "round-2.json").read_text())["vs_sft"]["complete"] is True
    assert "rolled back" not in outcome.stopped and len(fake.runs) == 2


def test_only_a_complete_failed_ab_with_its_rollback_is_recorded_as_gate_failed(rounds_setup):
    from pipelines.rounds import run_rounds

    cfg, folder, fake = rounds_setup
    fake.evaluate, fake.fail = FAILED_AB, True  # complete and failed, but the rollback step failed (it raised)
    with pytest.raises(RuntimeError):
        run_rounds(cfg, cfg.rounds)
    assert not (folder / "round-2.json").exists()  # the rerun tries the rollback again
    restored = "the local server serves seinfeld-dpo from /round1 again"
    fake.fail, fake.decision = False, {"passed": False, "action": "rolled_back", "serving": restored}
    outcome = run_rounds(cfg, cfg.rounds)
    assert [r.status for r in outcome.rounds] == ["done", "gate_failed"] and outcome.exit_code == 1
    assert outcome.stopped.endswith(f"serving was rolled back: {restored}")
    assert json.loads((folder / "round-2.json").read_text())["status"] == "gate_failed"


def test_a_gate_failed_record_without_a_complete_ab_behind_it_is_not_trusted(tmp_path):
    from training.adapters import adapter_sha256

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    old = dataclasses.replace(_record(2, status="gate_failed", path=str(adapter)),
                              adapter_sha256=adapter_sha256(adapter), vs_sft={**_ab(0.34), "gate_passed": False})
    save_record(tmp_path, old)  # what an interrupted A/B left before issue 27: the round was skipped for good
    assert load_record(tmp_path, 2) is None
    verdict = dataclasses.replace(old, vs_sft={**old.vs_sft, "complete": True, "passed": False, "rolled_back": "x"})
    save_record(tmp_path, verdict)
    assert load_record(tmp_path, 2) == verdict
    assert stop_reason(verdict, RoundsSettings(count=3)).endswith("serving was rolled back: x")
    # a record that names no rollback does not claim one
    assert "rolled back" not in stop_reason(dataclasses.replace(old, vs_sft=_ab(0.34)), RoundsSettings(count=3))


# Issue 27, --max-cost: a resumed run pays only for the rounds left; a recorded round is done and costs nothing.
def test_max_cost_is_compared_with_the_rounds_left_not_the_recorded_ones(tmp_path, monkeypatch, capsys):
    import sys
    import types

    import yaml

    from pipelines.dpo import main
    from pipelines.rounds import rounds_dir
    from pipelines.rounds_cost import forecast_rounds
    from pipelines.zenml_home import REPO_ROOT
    from training.adapters import adapter_sha256

    config = yaml.safe_load((REPO_ROOT / "configs" / "tiny.yaml").read_text())
    config.update(workdir=str(tmp_path / "work"), limit=4, holdout_fraction=0.3)
    config["judge"] = {"backend": "openai", "judge_url": "http://127.0.0.1:9/v1", "judge_model": "gpt-5"}
    path = tmp_path / "paid.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(config_file=path, rounds=2)
    # The rounds' key takes the pipeline's parameters (pipelines.pipeline imports ZenML): a stand-in here.
    pipeline = types.ModuleType("pipelines.pipeline")
    pipeline.pipeline_parameters = _fake_parameters
    monkeypatch.setitem(sys.modules, "pipelines.pipeline", pipeline)
    monkeypatch.setattr("pipelines.zenml_home.use_project_home", lambda: tmp_path / "zenml")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    folder = rounds_dir(cfg, cfg.rounds, pipeline.pipeline_parameters(cfg))
    save_record(folder, dataclasses.replace(_record(1, path=str(adapter)), adapter_sha256=adapter_sha256(adapter)))
    one, two = forecast_rounds(cfg, cfg.rounds)
    cap = two.cost_usd + one.cost_usd / 2  # above round 2's forecast, below both rounds'
    assert main(["run", "--config", str(path), "--rounds", "2", "--estimate", "--max-cost", str(cap)]) == 0
    err = capsys.readouterr().err
    assert "the 1 round(s) left of 2 (round(s) 1 recorded as finished: nothing more to pay)" in err
    assert "| 1 | done (recorded): nothing more to pay | - | - | $0.00 | $0.00 |" in err
    assert f"| left: 1 of 2 | 4 | 4 | {two.ab_requests} | ${two.cost_usd:,.2f} |" in err
    below = str(two.cost_usd / 2)  # what is left is still checked against the cap
    assert main(["run", "--config", str(path), "--rounds", "2", "--estimate", "--max-cost", below]) == 2
    assert "is over --max-cost" in capsys.readouterr().err
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")  # round 1 will run again: paid again
    assert main(["run", "--config", str(path), "--rounds", "2", "--estimate", "--max-cost", str(cap)]) == 2
    assert "| all 2 |" in capsys.readouterr().err
