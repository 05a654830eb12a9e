"""`judge --mode batch` within the Batch API queue's enqueued-token limit (NOTES: OpenAI Batch API limits), against
the test server's emulation of it (`batch_enqueued_token_limit`: a batch past it fails validation with
token_limit_exceeded, as in openai-python issue 2084)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from engine.errors import ConfigError
from engine.options import RunOptions
from stages.judge import JudgeSettings, estimate, run_judge
from tests.helpers import read_jsonl
from tests.test_judge import FAST, marked, prompt, write
from tests.test_judge_batch import _until_submitted, batch, rows_by_id
from testserver import run_in_process

ROWS = 12


def _rows(n: int = ROWS) -> list[dict]:
    return [{"prompt": prompt(i), "completions": marked(i)} for i in range(n)]


def _mean_request_tokens(comp, server) -> float:
    """Input tokens per request as the run counts them (estimate's count; the server's own count is a little lower:
    it leaves out the JSON schema and the per-message overhead)."""
    e = estimate(comp, batch(server))
    return e.tokens_in / e.requests


def _state(out) -> dict:
    return orjson.loads((out / "preferences.batches.json").read_bytes())


async def test_a_run_larger_than_the_queue_limit_finishes_with_every_row_judged_once(tmp_path):
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    ids = write(comp, _rows())
    async with run_in_process() as server:
        cap = int(2.5 * _mean_request_tokens(comp, server))  # two requests per chunk, one chunk enqueued at a time
        server.control(batch_enqueued_token_limit=cap, batch_slow_polls=1)  # each batch stays in progress a while
        settings = batch(server, batch_max_enqueued_tokens=cap, batch_in_flight=1)
        got = await run_judge(comp, out, settings, RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.unfinished, got.exit_code) == (ROWS, 0, 0, 0)
    assert stats["usage"]["gpt-5"]["prompt_tokens"] > 4 * cap  # the run is far larger than the queue holds
    assert stats["by_kind"]["judge"] == ROWS  # every row judged once: none paid twice
    assert stats["batch"]["batches_created"] == ROWS // 2 and "token_limit_exceeded" not in stats["batch"]
    assert stats["batch"]["enqueued_tokens_max"] <= cap  # later chunks waited for earlier ones to finish
    chunks = _state(out)["chunks"]
    assert [(c["round"], len(c["requests"]), c["status"], c["refused"]) for c in chunks] == [
        (1, 2, "completed", [])
    ] * (ROWS // 2)
    assert all(0 < c["tokens"] <= cap for c in chunks)
    assert sorted(rows_by_id(out / "preferences.jsonl")) == sorted(ids)


async def test_several_batches_run_at_once_within_the_queue_limit(tmp_path):
    """batch_in_flight 3: chunks are a third of the cap, so three batches are enqueued together and each finished one
    frees room for the next: never more than the cap, never only one at a time."""
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    ids = write(comp, _rows())
    async with run_in_process() as server:
        cap = int(3.5 * _mean_request_tokens(comp, server))  # a third of it holds one request
        server.control(batch_enqueued_token_limit=cap, batch_slow_polls=2)
        settings = batch(server, batch_max_enqueued_tokens=cap, batch_in_flight=3)
        got = await run_judge(comp, out, settings, RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.unfinished) == (ROWS, 0, 0)
    assert stats["batch"]["batches_created"] == ROWS and "token_limit_exceeded" not in stats["batch"]
    assert 2 * cap / 3.5 < stats["batch"]["enqueued_tokens_max"] <= cap  # at least three enqueued at once
    assert sorted(rows_by_id(out / "preferences.jsonl")) == sorted(ids)


async def test_token_limit_exceeded_is_no_attempt_the_batch_is_created_again_after_a_wait(tmp_path):
    """The cap (the default, 1.35M) is far above what this queue holds, as when the organisation's limit is lower or
    other jobs fill it: every chunk is created at once and most are refused. One attempt per request is allowed,
    yet no row is given up: a refused batch ran nothing, and its chunk is created again over the same file."""
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    ids = write(comp, _rows())
    async with run_in_process() as server:
        server.control(batch_enqueued_token_limit=int(2.5 * _mean_request_tokens(comp, server)))
        s = batch(server, batch_max_requests=2, batch_requeue_wait_s=0.01)  # waits of 5-10 ms, doubling
        opts = RunOptions(**(FAST | {"max_attempts": 1}))
        got = await asyncio.wait_for(run_judge(comp, out, s, opts), 60)
        stats = server.stats()
    refusals = stats["batch"]["token_limit_exceeded"]
    assert refusals >= ROWS // 2 - 1  # at least every chunk but the first was refused once
    assert (got.succeeded, got.failed, got.unfinished, got.exit_code) == (ROWS, 0, 0, 0)
    assert got.counters.extra["batch_queue_refusals"] == refusals
    assert stats["by_kind"]["judge"] == ROWS and stats["batch"]["files_uploaded"] == ROWS // 2
    assert stats["batch"]["batches_created"] == ROWS // 2 + refusals  # each refused batch created again, once
    chunks = _state(out)["chunks"]
    assert all(c["status"] == "completed" and c["collected"] and c["round"] == 1 for c in chunks)
    assert sum(len(c["refused"]) for c in chunks) == refusals
    records = read_jsonl(out / "preferences.jsonl")
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert all(r["judge"]["usage"]["requests"] == 1 for r in records)  # a refusal was never counted as a request


async def test_a_request_larger_than_the_cap_fails_its_row_at_the_start_with_the_rule_value_and_fix(tmp_path):
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    rows = _rows(4)
    write(comp, rows)
    async with run_in_process() as server:
        cap = int(1.5 * _mean_request_tokens(comp, server))
        rows[2]["completions"][0] += " long" * 2000  # ~2,500 tokens more: over the cap on its own
        ids = write(comp, rows)
        got = await run_judge(comp, out, batch(server, batch_max_enqueued_tokens=cap), RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.unfinished, got.exit_code) == (3, 1, 0, 1)  # not a hang
    assert stats["by_kind"]["judge"] == 3 and stats["batch"]["files_uploaded"] == 3  # never sent
    (error,) = read_jsonl(out / "preferences.errors.jsonl")
    assert error["id"] == ids[2] and error["attempts"] == 0
    assert f"input tokens (counted as `estimate` counts them), over batch_max_enqueued_tokens {cap:,}" in error["error"]
    assert "raise batch_max_enqueued_tokens" in error["error"] and "--finish-live" in error["error"]
    inputs = (out).glob("preferences.batch-*.input.jsonl")
    assert ids[2] not in {r["custom_id"] for p in inputs for r in read_jsonl(p)}


async def test_a_chunk_kept_back_for_the_cap_is_created_by_the_rerun_after_a_stop_and_never_twice(tmp_path):
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    ids = write(comp, _rows(4))
    async with run_in_process(batch_slow_polls=10_000) as server:  # in progress until the test lets it finish
        cap = int(2.5 * _mean_request_tokens(comp, server))
        s = batch(server, batch_max_enqueued_tokens=cap, batch_in_flight=1)
        first = asyncio.create_task(run_judge(comp, out, s, RunOptions(**FAST)))
        await _until_submitted(out, 1)
        await asyncio.sleep(0.1)  # a few polls: the second chunk stays written, waiting for room
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        kept = _state(out)["chunks"]
        assert [(bool(c["batch_id"]), c["status"]) for c in kept] == [(True, "in_progress"), (False, "prepared")]
        server.control(batch_slow_polls=0)
        got = await run_judge(comp, out, s, RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.exit_code) == (4, 0, 0)
    assert stats["by_kind"]["judge"] == 4 and stats["batch"]["batches_created"] == 2  # nothing paid twice
    assert sorted(rows_by_id(out / "preferences.jsonl")) == sorted(ids)


def test_the_queue_settings_are_validated():
    s = JudgeSettings(judge_model="gpt-5")
    assert (s.batch_max_enqueued_tokens, s.batch_requeue_wait_s) == (1_350_000, 60.0)
    with pytest.raises(ConfigError, match="batch_max_enqueued_tokens must be >= 1, got 0; set it to the Batch queue"):
        JudgeSettings(judge_model="gpt-5", batch_max_enqueued_tokens=0)
    with pytest.raises(ConfigError, match="batch_requeue_wait_s must be > 0"):
        JudgeSettings(judge_model="gpt-5", batch_requeue_wait_s=0)
