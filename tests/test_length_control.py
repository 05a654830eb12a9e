"""Issue 31: the length-controlled win rate beside the raw one, and the judge-reliability ledger.

No server and no pipeline: the A/B's files (pairs.jsonl and the judge's records) are written as the judge stage
writes them, with lengths and verdicts chosen, and the tally, the report and the metadata are read from them.
"""

from __future__ import annotations

import orjson
import pytest

from engine.errors import ConfigError
from stages.evaluate.length import length_controlled
from stages.evaluate.stage import EvaluateSettings
from stages.evaluate.tally import render, tally
from stages.judge.prompt import PROMPT_VERSION
from stages.judge.reference import REFERENCE_MODEL

N = 120
# Challenger minus baseline length, in characters: -100 to +495, so the challenger is longer in 5 of 6 pairs.
DIFFS = [-100 + 5 * i for i in range(N)]


def _length_biased(i: int, diff: int) -> float:
    """A judge that picks the longer text whenever the lengths differ by more than 30 characters; near equal length
    it has nothing to go on (a win, a loss, or the orders disagree: a tie)."""
    if abs(diff) > 30:
        return 1.0 if diff > 0 else 0.0
    return (1.0, 0.0, 0.5)[i % 3]


def _judge(index: int, agree: bool, backend: str = "openai") -> dict:
    model = REFERENCE_MODEL if backend == "reference" else "gpt-5"
    return {"backend": backend, "model": model, "reasoning_effort": "low" if backend == "openai" else None,
            "prompt_version": PROMPT_VERSION, "chosen_index": index, "rejected_index": 1 - index, "confidence": 4,
            "candidates": 2, "chosen_position": 0, "rejected_position": 1,
            "swap": {"agree": agree, "confidence": 4}}


def _ab_files(folder, outcomes: list[float], diffs: list[int] = DIFFS, backend: str = "openai") -> tuple:
    """An A/B's pairs.jsonl and judge records: pair i's challenger text is diffs[i] characters longer than the
    baseline's (300), and outcomes[i] its verdict: 1 won, 0 lost (both orders agree), 0.5 the orders disagree."""
    judge = folder / "judge"
    judge.mkdir(parents=True, exist_ok=True)
    pairs, kept, skipped = [], [], []
    for i, (outcome, diff) in enumerate(zip(outcomes, diffs, strict=True)):
        texts = ["b" * 300, "c" * (300 + diff)]
        pairs.append({"id": f"r{i}", "prompt": f"scene {i}", "completions": texts})
        if outcome == 0.5:
            skipped.append({"id": f"r{i}", "reason": "swap_disagreement", "judge": _judge(1, False, backend)})
        else:
            kept.append({"id": f"r{i}", "prompt": f"scene {i}", "chosen": texts[int(outcome)],
                         "rejected": texts[1 - int(outcome)], "judge": _judge(int(outcome), True, backend)})
    for path, rows in ((folder / "pairs.jsonl", pairs), (judge / "preferences.jsonl", kept),
                       (judge / "preferences.skipped.jsonl", skipped)):
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return judge, folder / "pairs.jsonl"


def test_a_judge_biased_toward_length_wins_raw_not_length_controlled_and_the_report_says_they_disagree(tmp_path):
    judge, pairs = _ab_files(tmp_path, [_length_biased(i, d) for i, d in enumerate(DIFFS)])
    r = tally(judge, EvaluateSettings(min_win_rate=0.6), pairs)
    raw, lc = r.win_rate, r.lc_win_rate
    assert raw["win_rate_all"] > 0.8 and raw["ci95_all"][0] > 0.7  # the challenger is longer, so it "wins"
    assert abs(lc["win_rate"] - 0.5) < 0.1 and lc["ci95"][0] < 0.5 < lc["ci95"][1]  # at equal length: a coin flip
    assert lc["slope"] > 1 and lc["judged"] == N and lc["fixed"] == 0
    assert r.mean_chars["challenger"] > r.mean_chars["baseline"] + 150
    assert "disagree" in r.disagree and "says seinfeld-dpo better" in r.disagree
    assert "says no clear difference" in r.disagree and "fails on the length-controlled one" in r.disagree
    assert r.gate == {"on": "raw", "min_win_rate": 0.6, "lower_bound": raw["ci95_all"][0], "passed": True}
    on_lc = tally(judge, EvaluateSettings(min_win_rate=0.6, gate_on="lc"), pairs)
    assert on_lc.passed is False and on_lc.gate["lower_bound"] == lc["ci95"][0] and on_lc.gate["on"] == "lc"
    report = render(on_lc)
    assert f"**{on_lc.disagree}**" in report and "Gate FAILED: lower end of the length-controlled" in report
    assert "| win rate, length-controlled (all pairs, ties half, at equal length) | " in report
    assert r.longer_wins == 0.9652  # 111 of the 115 decided pairs: all but the near-equal ones
    assert "WARNING: the longer text won 96.5% of the decided pairs" in report  # past max_longer_wins 75%
    assert "length-controlled" in r.headline()


def test_without_length_bias_the_raw_and_length_controlled_rates_agree(tmp_path):
    judge, pairs = _ab_files(tmp_path, [(0.0, 1.0, 1.0, 1.0)[i % 4] for i in range(N)])  # 3 in 4, whatever the length
    r = tally(judge, EvaluateSettings(min_win_rate=0.6), pairs)
    assert r.win_rate["win_rate_all"] == 0.75 and abs(r.lc_win_rate["win_rate"] - 0.75) < 0.02
    assert abs(r.lc_win_rate["slope"]) < 0.5
    assert r.disagree is None and "disagree" not in render(r)
    assert r.gate["passed"] is True and tally(judge, EvaluateSettings(min_win_rate=0.6, gate_on="lc"), pairs).passed


def test_the_fit_reads_the_mean_with_no_length_difference_and_counts_forfeits_as_they_are():
    same = length_controlled([1, 1, 0, 0.5], [0, 0, 0, 0])  # nothing to learn from length: the raw rate
    assert same.rate == pytest.approx(0.625) and same.slope == 0.0
    forfeits = length_controlled([1.0] * 6, [10, 20, 30, 40, 50, 60], [0.0] * 6)  # the challenger answered 6 blank
    assert forfeits.rate == pytest.approx(0.5, abs=1e-6) and forfeits.fixed == 6  # never above its raw rate
    assert length_controlled([], []).to_dict()["win_rate"] is None and length_controlled([], []).interval == (0, 1)
    assert length_controlled([1, 0, 1], [5, -5, 9]) == length_controlled([1, 0, 1], [5, -5, 9])  # a fixed seed
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        length_controlled([2.0], [1])


def test_the_ledger_records_flips_ties_length_bias_and_who_judged(tmp_path):
    outcomes = [0.5 if i % 3 == 0 else 1.0 for i in range(12)]  # the orders disagree on 4 of 12
    judge, pairs = _ab_files(tmp_path, outcomes, diffs=[10] * 12, backend="reference")
    r = tally(judge, EvaluateSettings(), pairs)
    ledger = r.judge_ledger
    assert (ledger["flip_rate"], ledger["tie_rate"], ledger["longer_wins"]) == (0.3333, 0.3333, 1.0)
    assert ledger["checked_both_orders"] == 12 and ledger["rows"] == 12
    assert ledger["judge"] == {"backend": "reference", "model": REFERENCE_MODEL, "reasoning_effort": None,
                               "prompt_version": PROMPT_VERSION, "prompt_sha256": None,
                               "rubric_version": REFERENCE_MODEL}
    human = ledger["human_agreement"]
    assert human["votes"] == 0 and human["agreement"] is None and "arena samples its own answers" in human["note"]
    assert len(r.warnings) == 2 and "flipped when the order was swapped in 33.3% of the pairs (4 of 12)" in \
        r.warnings[0]
    assert r.passed is True  # a warning, never a failure
    quiet = tally(judge, EvaluateSettings(max_flip_rate=None, max_longer_wins=1.0), pairs)
    assert quiet.warnings == [] and "WARNING" not in render(quiet)
    assert "## Judge reliability" in render(r) and f"rubric version {REFERENCE_MODEL}" in render(r)
    saved = r.to_dict()
    assert saved["judge_ledger"] == ledger and saved["lc_win_rate"] == r.lc_win_rate


def test_the_judge_report_carries_the_ledger_with_the_prompts_hash(tmp_path):
    import hashlib

    from stages.judge.prompt import RUBRIC
    from stages.judge.report import build_report, render_markdown

    judge, _ = _ab_files(tmp_path, [1.0, 1.0, 0.0, 0.5], diffs=[40, 40, 40, 0])  # chosen longer in 2 of 3
    report = build_report(judge)
    ledger = report["ledger"]
    assert (ledger["flip_rate"], ledger["tie_rate"], ledger["longer_wins"]) == (0.25, 0.25, 0.6667)
    assert ledger["judge"]["prompt_sha256"] == hashlib.sha256(RUBRIC.encode()).hexdigest()
    assert ledger["judge"]["model"] == "gpt-5" and ledger["judge"]["reasoning_effort"] == "low"
    assert "## Reliability ledger" in render_markdown(report)


def test_the_metadata_carries_the_length_controlled_rate_and_the_ledger(tmp_path):
    from steps.records import ab_eval_metadata

    judge, pairs = _ab_files(tmp_path, [_length_biased(i, d) for i, d in enumerate(DIFFS)])
    result = tally(judge, EvaluateSettings(min_win_rate=0.6, gate_on="lc"), pairs).to_dict()
    meta = ab_eval_metadata(result)
    assert (meta["lc_win_rate"], meta["lc_ci95_low"]) == (result["lc_win_rate"]["win_rate"],
                                                          result["lc_win_rate"]["ci95"][0])
    assert meta["lc_disagrees"] is True and meta["gate_on"] == "lc" and meta["gate_passed"] is False
    assert meta["longer_wins"] == 0.9652 and meta["human_votes"] == 0 and meta["judge_prompt_version"] == PROMPT_VERSION
    assert meta["judge_warnings"] == 1 and "human_agreement" not in meta  # None: no votes matched


@pytest.mark.parametrize(("values", "message"), [
    ({"gate_on": "length"}, "gate_on must be one of raw, lc; got 'length'"),
    ({"max_flip_rate": 1.5}, "max_flip_rate must be in \\[0, 1\\] or null"),
    ({"max_longer_wins": -0.1}, "max_longer_wins must be in \\[0, 1\\] or null"),
])
def test_gate_on_and_the_ledger_bounds_are_validated(values, message):
    from pipelines.config import PipelineConfigError, build

    with pytest.raises(ConfigError, match=message):
        EvaluateSettings(**values)
    with pytest.raises(PipelineConfigError, match="evaluate: " + message):
        build(EvaluateSettings, values, "evaluate")  # the pipeline's evaluate section, as the YAML gives it
