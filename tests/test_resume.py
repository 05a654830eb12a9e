"""Resume keyed by row content, and filters applied to judgments in hand (issue 11).

Over real HTTP against the test server's judge, counting the requests it gets: an input that grew, was
converted to CRLF or had one row regenerated is resumed row by row (unchanged rows never paid again);
`--min-confidence` changed between runs re-sorts the pairs without a request; every setting that changes
results refuses the resume, and only those.
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from engine.checkpoint import Checkpoint, fingerprint
from engine.errors import ConfigError
from engine.options import RunOptions
from engine.rows import prompt_id
from stages.generate import GenerateSettings, GenerateStage
from stages.judge import JudgeSettings, JudgeStage, run_judge
from tests.helpers import read_jsonl
from testserver import AVOID_MARKER, PREFER_MARKER, run_in_process

FAST = {"progress": False, "backoff_base_s": 0.0, "backoff_cap_s": 0.0, "fsync_every_s": 0.05}


def prompt(i: int) -> str:
    return f"[JERRY] Scene {i}: what is the deal with row {i}?"


def marked(i: int) -> list[str]:  # the test judge rates these 5
    return [f"[JERRY] good {i} {PREFER_MARKER}", f"[KRAMER] bad {i} {AVOID_MARKER}", f"[GEORGE] plain {i}, longer"]


def plain(i: int) -> list[str]:  # no markers, different lengths: the test judge rates these 3
    return [f"[GEORGE] a plain line {i}", f"[ELAINE] a plainer, longer line for {i}", f"[NEWMAN] {i}"]


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": prompt(i), "completions": marked(i) if i % 2 else plain(i)} for i in range(start, n)]


def write(path, items: list[dict], *, crlf: bool = False) -> None:
    end = b"\r\n" if crlf else b"\n"
    path.write_bytes(b"".join(orjson.dumps(r) + end for r in items))


async def judge(server, comp, out, **kw):
    settings = JudgeSettings(judge_model="gpt-5", judge_url=server.url, **kw)
    return await run_judge(comp, out, settings, RunOptions(**FAST), api_key="sk-test-resume")


def judged(server) -> int:
    return server.stats(log=False)["by_kind"].get("judge", 0)


async def test_grown_crlf_input_is_resumed_row_by_row_and_a_changed_row_is_redone(tmp_path):
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    async with run_in_process() as server:
        write(comp, rows(5))
        first = await judge(server, comp, out)
        assert (first.succeeded, judged(server)) == (5, 5)
        before = {r["id"]: r for r in read_jsonl(out / "preferences.jsonl")}

        grown = rows(8)  # a generate rerun with more prompts, saved with CRLF line endings
        write(comp, grown, crlf=True)
        second = await judge(server, comp, out)
        assert (second.succeeded, second.counters.done_before, judged(server)) == (3, 5, 8)  # only the new rows
        after = {r["id"]: r for r in read_jsonl(out / "preferences.jsonl")}
        assert set(after) == {prompt_id(r["prompt"]) for r in grown}
        assert all(after[i] == before[i] for i in before), "an unchanged row's pair was rewritten"

        grown[2] = {"prompt": prompt(2), "completions": [f"[JERRY] new {PREFER_MARKER}", f"x {AVOID_MARKER}"]}
        write(comp, grown)  # one row regenerated: same prompt, new completions
        third = await judge(server, comp, out)
        assert (third.succeeded, judged(server)) == (1, 9)
        results = read_jsonl(out / "preferences.jsonl")
        changed = prompt_id(prompt(2))
        assert len(results) == 8 and len({r["id"] for r in results}) == 8, "a redone row left two pairs"
        new = next(r for r in results if r["id"] == changed)
        assert new["chosen"] == f"[JERRY] new {PREFER_MARKER}"
        assert read_jsonl(out / "preferences.superseded.jsonl") == [before[changed]]  # kept, not deleted

        fourth = await judge(server, comp, out)  # nothing changed: nothing sent
        assert (fourth.succeeded, fourth.exit_code, judged(server)) == (0, 0, 9)


async def test_min_confidence_is_a_filter_on_pairs_in_hand_no_request_to_change_it(tmp_path):
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(10))
    async with run_in_process() as server:
        await judge(server, comp, out)
        all_pairs = read_jsonl(out / "preferences.jsonl")
        assert len(all_pairs) == 10 and judged(server) == 10

        strict = await judge(server, comp, out, min_confidence=4)
        kept = read_jsonl(out / "preferences.jsonl")
        low = read_jsonl(out / "preferences.skipped.jsonl")
        assert judged(server) == 10 and strict.exit_code == 0  # not one request
        assert sorted(r["judge"]["confidence"] for r in kept) == [5] * 5
        assert [(r["reason"], r["judge"]["confidence"]) for r in low] == [("low_confidence", 3)] * 5
        assert "below --min-confidence 4" in low[0]["detail"]
        report = orjson.loads((out / "report.json").read_bytes())
        assert report["rows"]["filtered"]["low_confidence"] == 5

        again = await judge(server, comp, out, min_confidence=4)  # same filter: nothing moves, no duplicate
        assert again.exit_code == 0
        assert read_jsonl(out / "preferences.jsonl") == kept and read_jsonl(out / "preferences.skipped.jsonl") == low

        await judge(server, comp, out, min_confidence=3)  # lowered: every pair is back, byte-identical
        assert judged(server) == 10
        assert sorted(read_jsonl(out / "preferences.jsonl"), key=lambda r: r["id"]) == sorted(
            all_pairs, key=lambda r: r["id"])
        assert read_jsonl(out / "preferences.skipped.jsonl") == []


def test_a_kill_between_the_two_rewrites_is_resolved_next_run(tmp_path):
    """The filter writes the gaining file first: a kill then leaves a pair in both files; the next re-sort
    leaves it in exactly one."""
    from stages.judge.filters import apply_min_confidence

    ck = Checkpoint(tmp_path, "preferences")
    pair = {"id": "aa", "input": "k", "prompt": "p", "chosen": "c", "rejected": "r", "judge": {"confidence": 2}}
    ck.results.write_bytes(orjson.dumps(pair) + b"\n")
    ck.skipped.write_bytes(orjson.dumps({**pair, "reason": "low_confidence", "detail": "x"}) + b"\n")
    for threshold, in_results in ((3, False), (None, True)):
        apply_min_confidence(ck, threshold)
        ids_results = [r["id"] for r in read_jsonl(ck.results)]
        ids_skipped = [r["id"] for r in read_jsonl(ck.skipped)]
        assert (ids_results, ids_skipped) == ((["aa"], []) if in_results else ([], ["aa"]))


def _refused(stage_settings, changed, stage_cls) -> bool:
    """Would a resume with `changed` settings be refused after a run with `stage_settings`?"""
    def fp(s):
        stage = stage_cls.__new__(stage_cls)
        stage.s = s
        return fingerprint(stage_cls.name, stage.settings(), "same-input")

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        ck = Checkpoint(Path(d), "x")
        ck.check_fingerprint(fp(stage_settings), fresh=False)
        ck.results.write_bytes(b'{"id":"aa","input":"k"}\n')
        try:
            ck.check_fingerprint(fp(changed), fresh=False)
        except ConfigError:
            return True
        return False


GEN = GenerateSettings(serve_url="http://127.0.0.1:1/v1", model="seinfeld")
JUDGE = JudgeSettings(judge_model="gpt-5", judge_url="http://127.0.0.1:1/v1")


@pytest.mark.parametrize("change, refused", [
    ({"n": 4}, True), ({"temperature": 0.7}, True), ({"seed": 7}, True), ({"model": "seinfeld-dpo"}, True),
    ({"max_tokens": GEN.max_tokens + 1}, True),
    ({"serve_url": "http://127.0.0.1:2/v1"}, False),  # where the model is served does not change its answers
    ({"timeout_s": 5.0}, False), ({"max_extra_requests": 1}, False),  # how it is asked does not either
])
def test_generate_resume_refused_exactly_for_result_settings(change, refused):
    assert _refused(GEN, dataclasses.replace(GEN, **change), GenerateStage) is refused


@pytest.mark.parametrize("change, refused", [
    ({"judge_model": "gpt-5-mini"}, True), ({"reasoning_effort": "high"}, True), ({"swap_check": True}, True),
    ({"backend": "reference"}, True),
    ({"min_confidence": 4}, False), ({"max_cost_usd": 1.0}, False), ({"timeout_s": 5.0}, False),
    ({"judge_url": "http://127.0.0.1:2/v1"}, False), ({"max_completion_tokens": 8192}, False),
])
def test_judge_resume_refused_exactly_for_result_settings(change, refused):
    assert _refused(JUDGE, dataclasses.replace(JUDGE, **change), JudgeStage) is refused


async def test_a_view_holds_exactly_the_records_made_from_this_inputs_rows(tmp_path):
    """What a pipeline step hands on from a checkpoint shared across inputs (engine/view.py)."""
    from engine.rows import row_key
    from engine.view import write_view
    from stages.judge.rows import validate_completions_row

    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(6))
    async with run_in_process() as server:
        await judge(server, comp, out)
    smaller = rows(6)[:4]
    smaller[1] = {"prompt": prompt(1), "completions": ["changed", "since"]}  # judged with other completions
    write(comp, smaller)
    view = await write_view(out / "preferences.jsonl", comp, validate_completions_row, out / "views")
    got = read_jsonl(view)
    expect = [prompt_id(r["prompt"]) for r in smaller if r is not smaller[1]]
    assert sorted(r["id"] for r in got) == sorted(expect)
    by_id = {prompt_id(r["prompt"]): r for r in smaller}
    assert all(r["input"] == row_key(validate_completions_row(by_id[r["id"]])) for r in got)
    again = await write_view(out / "preferences.jsonl", comp, validate_completions_row, out / "views")
    assert again == view and view.name.startswith("preferences.")  # named by content: stable, never rewritten


async def test_a_real_partial_write_is_cut_and_that_row_alone_is_redone(tmp_path):
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(5))
    async with run_in_process() as server:
        await judge(server, comp, out)
        results = out / "preferences.jsonl"
        data = results.read_bytes()
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        results.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # a write cut half way
        again = await judge(server, comp, out)
        assert (again.succeeded, judged(server)) == (1, 6)
    assert results.read_bytes().count(b"\n") == 5 and len(read_jsonl(results)) == 5


async def test_a_complete_last_record_without_newline_is_kept_not_glued_or_repaid(tmp_path):
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(4))
    async with run_in_process() as server:
        await judge(server, comp, out)
        results = out / "preferences.jsonl"
        results.write_bytes(results.read_bytes().rstrip(b"\n"))
        write(comp, rows(5))  # one more row to append after it
        again = await judge(server, comp, out)
        assert (again.succeeded, judged(server)) == (1, 5)  # the newline-less record was not judged again
    assert len(read_jsonl(results)) == 5  # every line parses: nothing glued


async def test_a_retryable_failure_stops_at_exactly_max_attempts(tmp_path):
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(1))
    async with run_in_process(fail_next=[{"kind": "500", "count": 50}]) as server:
        settings = JudgeSettings(judge_model="gpt-5", judge_url=server.url)
        summary = await run_judge(comp, out, settings, RunOptions(**(FAST | {"max_attempts": 4})), api_key="sk-x")
        assert (summary.failed, judged(server)) == (1, 4)
    errors = read_jsonl(out / "preferences.errors.jsonl")
    assert [(e["attempts"], e["status"]) for e in errors] == [(4, 500)]


def test_a_folder_holding_only_skipped_rows_is_checked_like_any_other(tmp_path):
    ck = Checkpoint(tmp_path, "preferences")
    ck.check_fingerprint(fingerprint("judge", {"swap_check": False}, "x"), fresh=False)
    ck.skipped.write_bytes(b'{"id":"aa","input":"k","reason":"fewer_than_two_distinct"}\n')
    with pytest.raises(ConfigError, match="swap_check: was False, now True"):
        ck.check_fingerprint(fingerprint("judge", {"swap_check": True}, "x"), fresh=False)


def test_a_filter_moving_pairs_both_ways_ends_with_each_pair_in_one_file(tmp_path):
    """Not reachable from a consistent folder (one threshold moves pairs one way), but an edited one may hold
    a result below the threshold and a low-confidence skip above it: each ends where the threshold says."""
    from stages.judge.filters import apply_min_confidence

    ck = Checkpoint(tmp_path, "preferences")

    def pair(i, conf):
        return {"id": i, "input": "k", "prompt": "p", "chosen": "c", "rejected": "r", "judge": {"confidence": conf}}

    ck.results.write_bytes(orjson.dumps(pair("low", 2)) + b"\n" + orjson.dumps(pair("high", 5)) + b"\n")
    ck.skipped.write_bytes(orjson.dumps({**pair("back", 4), "reason": "low_confidence", "detail": "x"}) + b"\n")
    assert apply_min_confidence(ck, 3) == (1, 1)
    assert sorted(r["id"] for r in read_jsonl(ck.results)) == ["back", "high"]
    assert [(r["id"], r["reason"]) for r in read_jsonl(ck.skipped)] == [("low", "low_confidence")]


async def test_a_view_counts_a_record_from_before_input_keys_as_resume_does(tmp_path):
    from engine.view import write_view
    from stages.judge.rows import validate_completions_row

    comp, results = tmp_path / "completions.jsonl", tmp_path / "preferences.jsonl"
    write(comp, rows(2))
    ids = [prompt_id(r["prompt"]) for r in rows(2)]
    results.write_bytes(orjson.dumps({"id": ids[0], "prompt": "p", "chosen": "c", "rejected": "r"}) + b"\n"
                        + orjson.dumps({"id": ids[1], "input": "0" * 16, "prompt": "p"}) + b"\n")
    view = await write_view(results, comp, validate_completions_row, tmp_path / "views")
    assert [r["id"] for r in read_jsonl(view)] == [ids[0]]  # legacy kept; a stale key is not this input's
