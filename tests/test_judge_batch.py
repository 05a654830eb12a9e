"""`judge --mode batch` against the test server's /v1/files and /v1/batches (real loopback HTTP through the openai
SDK): the same pairs as live mode, resume after kill -9 without a second batch, the lock, failed / expired /
malformed requests retried within the live limits, --finish-live, --max-cost and estimate at batch prices."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import orjson
import pytest

from engine.options import RunOptions
from stages.judge import JudgeSettings, estimate, run_judge
from stages.judge.batch_state import batch_metadata
from stages.judge.cost import Prices
from tests.helpers import ROOT, cli, env, read_jsonl
from tests.test_judge import FAST, marked, prompt, settings, write
from testserver import run_in_process, start_server

POLL = {"mode": "batch", "poll_interval_s": 0.02}


def batch(server, **kw) -> JudgeSettings:
    return settings(server, **(POLL | kw))


def rows_by_id(path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


def without_usage(record: dict) -> dict:
    judge = {k: v for k, v in record["judge"].items() if k != "usage"}
    return {**record, "judge": judge}


@pytest.mark.parametrize("swap_check", [False, True])
async def test_batch_pairs_equal_live_pairs_at_half_the_price(tmp_path, swap_check):
    comp = tmp_path / "c.jsonl"
    rows = [{"prompt": prompt(i), "completions": marked(i)} for i in range(11)]
    rows.append({"prompt": prompt(50), "completions": ["[JERRY] same", "[JERRY] same"]})  # skipped, no request
    ids = write(comp, rows)
    async with run_in_process(batch_slow_polls=2) as server:
        live = await run_judge(comp, tmp_path / "live", settings(server, swap_check=swap_check), RunOptions(**FAST))
        live_requests = server.stats()["by_kind"]["judge"]
        server.reset()
        s = batch(server, swap_check=swap_check, batch_max_requests=4)
        got = await run_judge(comp, tmp_path / "batch", s, RunOptions(**FAST))
        stats = server.stats()
    passes = 2 if swap_check else 1
    assert (got.succeeded, got.skipped, got.failed, got.exit_code) == (11, 1, 0, 0)
    assert stats["by_kind"]["judge"] == live_requests == 11 * passes  # each request answered once
    assert stats["batch"]["batches_created"] == -(-11 * passes // 4)  # chunks of at most 4 requests
    live_rows, batch_rows = (
        rows_by_id(tmp_path / "live" / "preferences.jsonl"),
        rows_by_id(tmp_path / "batch" / "preferences.jsonl"),
    )
    assert set(batch_rows) == set(ids[:11])
    for i in ids[:11]:
        assert without_usage(batch_rows[i]) == without_usage(live_rows[i])  # same prompt, shuffle, verdict, input key
        b, lv = batch_rows[i]["judge"]["usage"], live_rows[i]["judge"]["usage"]
        assert b["mode"] == "batch" and b["tokens_out"] == lv["tokens_out"] and b["requests"] == passes
        assert b["cost_usd"] == pytest.approx(lv["cost_usd"] / 2, abs=1e-8)
    assert read_jsonl(tmp_path / "batch" / "preferences.skipped.jsonl")[0]["reason"] == "fewer_than_two_distinct"
    assert got.cost_usd == pytest.approx(live.cost_usd / 2, rel=1e-6)
    assert got.counters.extra["batch_saving_usd"] == pytest.approx(got.cost_usd, rel=1e-6)
    report = orjson.loads((tmp_path / "batch" / "report.json").read_bytes())
    assert report["usage"]["batch_rows"] == 11 and report["usage"]["batch_saving_usd"] == pytest.approx(
        got.cost_usd, abs=1e-6
    )
    assert "saved $" in (tmp_path / "batch" / "report.md").read_text()
    meta = batch_metadata(tmp_path / "batch")
    state = orjson.loads((tmp_path / "batch" / "preferences.batches.json").read_bytes())
    assert meta["batch_ids"] == [c["batch_id"] for c in state["chunks"]] and len(meta["batch_ids"]) == len(
        state["chunks"]
    )
    assert all(c["collected"] and c["status"] == "completed" for c in state["chunks"])
    assert sorted(cid for c in state["chunks"] for cid in c["requests"]) == sorted(
        i + suffix for i in ids[:11] for suffix in ([""] + [".swap"] * swap_check)
    )


async def test_chunks_respect_the_byte_limit(tmp_path):
    comp = tmp_path / "c.jsonl"
    write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(6)])
    async with run_in_process() as server:
        got = await run_judge(comp, tmp_path / "b", batch(server, batch_max_bytes=7000), RunOptions(**FAST))
        created = server.stats()["batch"]["batches_created"]
    inputs = sorted((tmp_path / "b").glob("preferences.batch-*.input.jsonl"))
    assert got.succeeded == 6 and created == len(inputs) >= 2
    assert all(p.stat().st_size <= 7000 for p in inputs) and sum(len(read_jsonl(p)) for p in inputs) == 6


async def test_failed_validation_and_expired_half_are_retried_in_follow_up_batches_only(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(10)])
    # chunk 1 (5 rows) fails validation, chunk 2 (5 rows) expires with 2 answered: 8 requests go to round 2
    async with run_in_process(batch_fail_validation=1, batch_expire_half=1) as server:
        got = await run_judge(comp, tmp_path / "b", batch(server, batch_max_requests=5), RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.exit_code) == (10, 0, 0)
    assert stats["by_kind"]["judge"] == 10  # a failed or expired request was never answered: nothing paid twice
    assert stats["batch"]["batches_created"] == 4 and got.retries == 8
    state = orjson.loads((tmp_path / "b" / "preferences.batches.json").read_bytes())
    assert [(c["round"], c["status"], len(c["requests"])) for c in state["chunks"]] == [
        (1, "failed", 5),
        (1, "expired", 5),
        (2, "completed", 5),
        (2, "completed", 3),
    ]
    assert "failed validation" in state["chunks"][0]["errors"][0]
    assert sorted(rows_by_id(tmp_path / "b" / "preferences.jsonl")) == sorted(ids)
    assert all(r["judge"]["usage"]["requests"] in (1, 2) for r in read_jsonl(tmp_path / "b" / "preferences.jsonl"))


async def test_error_lines_and_malformed_answers_fail_as_live_within_the_attempt_limits(tmp_path):
    tags = ["OK1", "OK2", "E500", "E400", "BADJSON", "NONPERM"]
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i, f" ROW-{t}"), "completions": marked(i)} for i, t in enumerate(tags)])
    faults = [
        {"substring": "ROW-E500", "kind": "500"},
        {"substring": "ROW-E400", "kind": "400"},
        {"substring": "ROW-BADJSON", "kind": "bad_content"},
        {"substring": "ROW-NONPERM", "kind": "non_permutation"},
    ]
    opts = RunOptions(**(FAST | {"max_attempts": 4}))
    async with run_in_process(fail_matching=faults) as server:
        live = await run_judge(comp, tmp_path / "live", settings(server), opts)
        server.reset()
        server.control(fail_matching=faults)
        got = await run_judge(comp, tmp_path / "b", batch(server), opts)
        requests = server.stats()["by_kind"]["judge"]
    assert (got.succeeded, got.failed, got.exit_code) == (2, 4, 1) == (live.succeeded, live.failed, live.exit_code)
    errors = rows_by_id(tmp_path / "b" / "preferences.errors.jsonl")
    live_errors = rows_by_id(tmp_path / "live" / "preferences.errors.jsonl")
    assert {i: e["attempts"] for i, e in errors.items()} == {ids[2]: 4, ids[3]: 1, ids[4]: 3, ids[5]: 3}
    for i in ids[2:]:  # the same answer check and wording as live
        assert errors[i]["error"] == live_errors[i]["error"], (errors[i], live_errors[i])
    assert "HTTP 500" in errors[ids[2]]["error"] and "after 4 attempts" in errors[ids[2]]["error"]
    assert "answer is not JSON" in errors[ids[4]]["error"] and "not a permutation" in errors[ids[5]]["error"]
    assert requests == 2 + 4 + 1 + 3 + 3  # four rounds at most, each failed request sent only while tries were left
    state = orjson.loads((tmp_path / "b" / "preferences.batches.json").read_bytes())
    assert state["requests"] == {} and state["held"] == {}  # nothing kept for rows finished or failed
    async with run_in_process() as server:  # a rerun retries exactly the failed rows, in a batch
        again = await run_judge(comp, tmp_path / "b", batch(server), opts)
        assert server.stats()["by_kind"]["judge"] == 4
    assert (again.succeeded, again.failed, again.counters.done_before) == (4, 0, 2)


async def test_finish_live_judges_what_the_expired_batch_left_live(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(8)])
    async with run_in_process(batch_expire_half=1) as server:
        got = await run_judge(comp, tmp_path / "b", batch(server, finish_live=True), RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.unfinished, got.exit_code) == (8, 0, 0, 0)
    assert stats["batch"]["batches_created"] == 1 and stats["by_kind"]["judge"] == 8  # 4 in the batch, 4 live
    kept = rows_by_id(tmp_path / "b" / "preferences.jsonl")
    assert sorted(kept) == sorted(ids)
    modes = [r["judge"]["usage"].get("mode", "live") for r in kept.values()]
    assert modes.count("batch") == 4 and modes.count("live") == 4
    summary = orjson.loads((tmp_path / "b" / "preferences.summary.json").read_bytes())
    assert summary["succeeded"] == 8 and summary["exit_code"] == 0


async def test_max_cost_is_checked_before_submitting_at_batch_prices(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(12)])
    # $1,000 per 1M output tokens live: ~$0.09 a row live, ~$0.045 in batch; $0.20 admits 4 rows (live: 2)
    price = {"prices": Prices(0.0, 0.0, 1000.0), "expected_output_tokens": 90}
    async with run_in_process() as server:
        got = await run_judge(comp, tmp_path / "b", batch(server, max_cost_usd=0.20, **price), RunOptions(**FAST))
        assert server.stats()["by_kind"]["judge"] == got.succeeded == 4  # only what fits was sent
        assert "max cost reached" in got.stopped_reason and "batch prices" in got.stopped_reason
        assert got.cost_usd <= 0.20 and (got.unfinished, got.exit_code) == (8, 1)
        rest = await run_judge(comp, tmp_path / "b", batch(server, **price), RunOptions(**FAST))
        assert server.stats()["by_kind"]["judge"] == 12  # the rerun sends the other 8 only
    assert (rest.succeeded, rest.counters.done_before, rest.exit_code) == (8, 4, 0)
    assert sorted(rows_by_id(tmp_path / "b" / "preferences.jsonl")) == sorted(ids)


def test_estimate_prices_batch_mode_at_half_of_live(tmp_path):
    comp = tmp_path / "c.jsonl"
    write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(5)])
    live = estimate(comp, JudgeSettings(judge_model="gpt-5"))
    half = estimate(comp, JudgeSettings(judge_model="gpt-5", mode="batch"))
    assert half.cost_usd == pytest.approx(live.cost_usd / 2) and half.tokens_in == live.tokens_in
    assert half.prices == {"input_per_m": 0.625, "cached_input_per_m": 0.0625, "output_per_m": 5.0}
    out = subprocess.run(
        cli("estimate", "--completions", str(comp), "--mode", "batch"),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Batch API prices: 50% of live" in out.stdout
    assert f"${half.cost_usd:,.2f} expected" in out.stdout


def _batch_cli(server, comp, out, *extra: str) -> list[str]:
    return cli(
        "judge",
        "--completions",
        str(comp),
        "--out",
        str(out),
        "--judge-url",
        server.url,
        "--judge-model",
        "gpt-5",
        "--mode",
        "batch",
        "--poll-interval",
        "0.05",
        *extra,
    )


def _wait_for_batch_ids(out, proc, count: int, timeout: float = 30) -> dict:
    path = out / "preferences.batches.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            state = orjson.loads(path.read_bytes())
            if sum(bool(c["batch_id"]) for c in state["chunks"]) >= count:
                return state
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    raise AssertionError(f"no {count} batch id(s) recorded in {timeout}s")


def test_kill_9_while_polling_then_rerun_resumes_polling_and_submits_nothing_twice(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(9)])
    out = tmp_path / "b"
    with start_server(batch_slow_polls=10_000) as server:  # in progress until the test lets them finish
        proc = subprocess.Popen(
            _batch_cli(server, comp, out, "--limit", "9"),
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc_args = ["--limit", "9"]
        env_ = env()
        # batch_max_requests is the API's 50,000 here: one chunk; wait for its batch id, then a second process
        state = _wait_for_batch_ids(out, proc, 1)
        second = subprocess.run(
            _batch_cli(server, comp, out, *proc_args), cwd=ROOT, env=env_, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 2 and "only one process may write an output folder" in second.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        before = server.stats(log=False)["batch"]
        assert before["batches_created"] == 1
        live = subprocess.run(
            cli(
                "judge",
                "--completions",
                str(comp),
                "--out",
                str(out),
                "--judge-url",
                server.url,
                "--judge-model",
                "gpt-5",
            ),
            cwd=ROOT,
            env=env_,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert live.returncode == 2 and "not collected yet" in live.stderr  # live mode would pay for them twice
        # a kill between `batches.create` and the state write: the batch is found by its input file id
        chunk = state["chunks"][0]
        chunk["batch_id"], chunk["status"] = None, "uploaded"
        (out / "preferences.batches.json").write_bytes(orjson.dumps(state))
        server.control(batch_slow_polls=0)
        done = subprocess.run(
            _batch_cli(server, comp, out, *proc_args), cwd=ROOT, env=env_, capture_output=True, text=True, timeout=60
        )
        after = server.stats(log=False)
    assert done.returncode == 0, done.stderr
    assert after["batch"]["batches_created"] == 1 and after["batch"]["files_uploaded"] == 1
    assert after["by_kind"]["judge"] == 9  # every request answered once, none paid twice
    kept = [r["id"] for r in read_jsonl(out / "preferences.jsonl")]
    assert len(kept) == len(set(kept)) == 9 and set(kept) == set(ids)
    assert "found batch" in done.stderr and "batch API: 9 row(s)" in done.stderr


def test_evaluate_judges_both_orders_through_the_batch_api(tmp_path):
    from tests.helpers import write_prompts
    from tests.test_evaluate import N, evaluate

    write_prompts(tmp_path / "p.jsonl", N)
    with start_server(model_markers={"seinfeld-dpo": "PREFER-ME"}) as server:
        run = evaluate(server, tmp_path / "p.jsonl", tmp_path / "out", **POLL)
        stats = server.stats(log=False)
    r = run.result
    assert (r.wins, r.losses, r.judged, run.exit_code) == (N, 0, N, 0)
    assert stats["by_kind"]["judge"] == 2 * N and stats["batch"]["batches_created"] == 1  # both orders, one batch
    kept = read_jsonl(tmp_path / "out" / "judge" / "preferences.jsonl")
    assert all(k["judge"]["usage"]["mode"] == "batch" and k["judge"]["swap"]["agree"] for k in kept)


def test_the_config_file_chooses_batch_mode_and_rejects_an_unknown_one(tmp_path):
    from pipelines.config import PipelineConfigError, load_config

    config = tmp_path / "c.yaml"
    config.write_text("profile: modal\njudge:\n  mode: batch\n  poll_interval_s: 60\n  finish_live: true\n")
    loaded = load_config(config_file=config, env={})
    assert (loaded.judge.mode, loaded.judge.poll_interval_s, loaded.judge.finish_live) == ("batch", 60, True)
    assert loaded.judge.billed_price.output_per_m == 5.0  # gpt-5 at batch prices
    config.write_text("profile: modal\njudge:\n  mode: overnight\n")
    with pytest.raises(PipelineConfigError, match="mode must be one of"):
        load_config(config_file=config, env={})


async def test_finish_live_with_swap_check_sends_only_the_order_the_batch_did_not_answer(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(3)])
    # one batch of 6 lines (row 0, row 0 swapped, row 1, ...) expires half done: row 0 answered in both orders,
    # row 1 in its first order only, row 2 in neither; live gets row 1's second order and both of row 2's
    async with run_in_process(batch_expire_half=1) as server:
        await run_judge(comp, tmp_path / "live", settings(server, swap_check=True), RunOptions(**FAST))
        server.reset()
        server.control(batch_expire_half=1)
        s = batch(server, swap_check=True, finish_live=True)
        got = await run_judge(comp, tmp_path / "b", s, RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.exit_code) == (3, 0, 0)
    assert stats["by_kind"]["judge"] == 6  # every order answered once: row 1's first order was not paid again
    kept, want = rows_by_id(tmp_path / "b" / "preferences.jsonl"), rows_by_id(tmp_path / "live" / "preferences.jsonl")
    assert [without_usage(kept[i]) for i in ids] == [without_usage(want[i]) for i in ids]
    usage = kept[ids[1]]["judge"]["usage"]  # its batch spend carried into the live record
    assert (usage["requests"], usage["answered"]) == (3, 2)  # the expired request counts as an attempt
    assert usage["cost_usd"] == pytest.approx(0.75 * want[ids[1]]["judge"]["usage"]["cost_usd"], abs=1e-7)
    part = usage["batch"]  # the batch part, within the totals: its order at half price, for the report's saving
    assert (part["mode"], part["requests"], part["answered"]) == ("batch", 2, 1) and "mode" not in usage
    assert part["cost_usd"] == pytest.approx(0.25 * want[ids[1]]["judge"]["usage"]["cost_usd"], abs=1e-7)
    assert "batch" not in kept[ids[2]]["judge"]["usage"]  # judged live in both orders
    report = orjson.loads((tmp_path / "b" / "report.json").read_bytes())["usage"]
    batch_part = kept[ids[0]]["judge"]["usage"]["cost_usd"] + part["cost_usd"]  # row 0 all batch, row 1 half
    assert report["batch_rows"] == 2 and report["batch_cost_usd"] == pytest.approx(batch_part, abs=1e-6)


async def test_a_judgement_in_hand_is_not_asked_again(tmp_path):
    from engine.client import make_client
    from engine.runner import run_stage
    from stages.judge import JudgeStage
    from stages.judge.stage import Judgement

    class FirstOrderInHand(JudgeStage):  # as --finish-live does with the order a batch answered
        def judgements_in_hand(self, row, order, usage):
            usage.requests += 1
            return Judgement(order, order, ["A", "B", "C"], 9, "in hand"), None

    comp = tmp_path / "c.jsonl"
    write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(3)])
    async with run_in_process() as server:
        s = settings(server, swap_check=True)
        client = make_client(server.url, "sk-test", timeout_s=30, concurrency=4)
        try:
            got = await run_stage(FirstOrderInHand(s, client), comp, tmp_path / "o", RunOptions(**FAST))
        finally:
            await client.close()
        assert server.stats()["by_kind"]["judge"] == 3  # the reversed order only
    assert got.succeeded + got.skipped == 3
    out = tmp_path / "o"
    for r in read_jsonl(out / "preferences.jsonl") + read_jsonl(out / "preferences.skipped.jsonl"):
        assert r["judge"]["reason"] == "in hand" and r["judge"]["usage"]["requests"] == 2


async def test_a_rerun_after_a_failed_order_sends_only_that_order_and_not_for_a_changed_row(tmp_path):
    comp = tmp_path / "c.jsonl"
    rows = [{"prompt": prompt(i), "completions": marked(i)} for i in range(3)]
    ids = write(comp, rows)
    opts = RunOptions(**(FAST | {"max_attempts": 1}))  # an expired request fails its row at once
    async with run_in_process(batch_expire_half=1) as server:  # as above: row 1 answered in its first order only
        first = await run_judge(comp, tmp_path / "b", batch(server, swap_check=True), opts)
        assert (first.succeeded, first.failed) == (1, 2) and server.stats()["by_kind"]["judge"] == 3
        again = await run_judge(comp, tmp_path / "b", batch(server, swap_check=True), opts)
        assert server.stats()["by_kind"]["judge"] == 3 + 3  # row 1's second order, both of row 2's
    assert (again.succeeded, again.failed, again.counters.done_before) == (2, 0, 1)
    assert rows_by_id(tmp_path / "b" / "preferences.jsonl")[ids[1]]["judge"]["swap"]["agree"]
    # a verdict held for a row whose completions changed since is not used: both orders are asked again
    async with run_in_process(batch_expire_half=1) as server:
        await run_judge(comp, tmp_path / "c", batch(server, swap_check=True), opts)
        rows[1]["completions"] = [c + " (revised)" for c in rows[1]["completions"]]
        write(comp, rows)
        changed = await run_judge(comp, tmp_path / "c", batch(server, swap_check=True), opts)
        assert server.stats()["by_kind"]["judge"] == 3 + 4
    assert (changed.succeeded, changed.failed) == (2, 0)
    assert rows_by_id(tmp_path / "c" / "preferences.jsonl")[ids[1]]["judge"]["usage"]["answered"] == 2


async def test_a_request_over_the_file_size_limit_fails_its_row_before_any_upload(tmp_path):
    comp = tmp_path / "c.jsonl"
    rows = [{"prompt": prompt(i), "completions": marked(i)} for i in range(4)]
    rows[2]["completions"][0] += " long" * 2000  # one request of ~12 kB: no file of 7,000 bytes can hold it
    ids = write(comp, rows)
    async with run_in_process() as server:
        got = await run_judge(comp, tmp_path / "b", batch(server, batch_max_bytes=7000), RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.unfinished, got.exit_code) == (3, 1, 0, 1)
    assert stats["by_kind"]["judge"] == 3  # the big row was never sent
    inputs = sorted((tmp_path / "b").glob("preferences.batch-*.input.jsonl"))
    assert all(p.stat().st_size <= 7000 for p in inputs) and ids[2] not in {
        r["custom_id"] for p in inputs for r in read_jsonl(p)
    }
    (error,) = read_jsonl(tmp_path / "b" / "preferences.errors.jsonl")
    assert error["id"] == ids[2] and error["line"] == 3 and error["attempts"] == 0
    assert (
        "over the Batch API's limit of 7,000 bytes per input file" in error["error"] and "--mode live" in error["error"]
    )
    assert sorted(rows_by_id(tmp_path / "b" / "preferences.jsonl")) == sorted(ids[:2] + ids[3:])


async def test_a_create_whose_response_is_lost_is_not_retried_into_a_second_batch(tmp_path):
    comp = tmp_path / "c.jsonl"
    write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(4)])
    async with run_in_process() as server:
        server.batches.lose_create_response_left = 1  # the batch exists, the client sees a 500 and retries
        got = await run_judge(comp, tmp_path / "b", batch(server), RunOptions(**FAST))
        stats = server.stats()
    assert (got.succeeded, got.failed, got.exit_code) == (4, 0, 0)
    assert stats["batch"]["batches_created"] == 1 and stats["by_kind"]["judge"] == 4  # nothing paid twice


async def _until_submitted(out, count: int, timeout: float = 30) -> None:
    path = out / "preferences.batches.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and sum(bool(c["batch_id"]) for c in orjson.loads(path.read_bytes())["chunks"]) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {count} batch id(s) recorded in {timeout}s")


async def test_a_smaller_limit_on_a_rerun_still_collects_every_answer_of_the_open_batches(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(6)])
    out = tmp_path / "b"
    async with run_in_process(batch_slow_polls=10_000) as server:  # in progress until the test lets it finish
        first = asyncio.create_task(run_judge(comp, out, batch(server), RunOptions(**FAST)))
        await _until_submitted(out, 1)
        first.cancel()  # stopped while its batch of 6 is still running
        with pytest.raises(asyncio.CancelledError):
            await first
        server.control(batch_slow_polls=0)
        small = await run_judge(comp, out, batch(server), RunOptions(**(FAST | {"limit": 3})))
        assert (small.succeeded, small.failed, small.unfinished, small.exit_code) == (6, 0, 0, 0)
        assert sorted(rows_by_id(out / "preferences.jsonl")) == sorted(ids)  # rows 4-6 too: they are paid for
        full = await run_judge(comp, out, batch(server), RunOptions(**FAST))
        stats = server.stats()
    assert (full.succeeded, full.counters.done_before, full.exit_code) == (0, 6, 0)
    assert stats["by_kind"]["judge"] == 6 and stats["batch"]["batches_created"] == 1  # nothing paid twice


async def test_a_smaller_limit_keeps_the_verdict_held_for_a_row_beyond_it(tmp_path):
    comp = tmp_path / "c.jsonl"
    write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(3)])
    opts = RunOptions(**(FAST | {"max_attempts": 1}))  # an expired request fails its row at once
    async with run_in_process(batch_expire_half=1) as server:  # row 1 answered in its first order only
        first = await run_judge(comp, tmp_path / "b", batch(server, swap_check=True), opts)
        assert (first.succeeded, first.failed) == (1, 2) and server.stats()["by_kind"]["judge"] == 3
        small = await run_judge(comp, tmp_path / "b", batch(server, swap_check=True), RunOptions(**FAST, limit=1))
        assert (small.succeeded, small.counters.done_before) == (0, 1)
        again = await run_judge(comp, tmp_path / "b", batch(server, swap_check=True), opts)
        assert server.stats()["by_kind"]["judge"] == 3 + 3  # row 1's second order, both of row 2's
    assert (again.succeeded, again.failed, again.counters.done_before) == (2, 0, 1)


async def test_an_order_answered_after_its_row_failed_in_the_same_round_is_counted_and_held(tmp_path):
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(2)])
    opts = RunOptions(**(FAST | {"max_attempts": 1}))  # an expired request fails its row at once
    async with run_in_process() as server:
        await run_judge(comp, tmp_path / "live", settings(server, swap_check=True), RunOptions(**FAST))
        live = rows_by_id(tmp_path / "live" / "preferences.jsonl")
        server.reset()
        # round 1 in chunks of 3: [row 0, row 0 swapped, row 1] expires with row 0 answered, then [row 1 swapped]
        # completes: row 1 failed in the first batch, and its reversed order is answered in the second
        server.control(batch_expire_half=1)
        s = batch(server, swap_check=True, batch_max_requests=3)
        first = await run_judge(comp, tmp_path / "b", s, opts)
        assert (first.succeeded, first.failed) == (0, 2) and server.stats()["by_kind"]["judge"] == 2
        again = await run_judge(comp, tmp_path / "b", s, opts)
        assert server.stats()["by_kind"]["judge"] == 2 + 2  # row 0's reversed order, row 1's first: none twice
    per_order = [live[i]["judge"]["usage"]["cost_usd"] / 4 for i in ids]  # half the price, one of two orders
    assert first.cost_usd == pytest.approx(per_order[0] + per_order[1], abs=1e-8)  # row 1's answer too
    assert first.counters.extra["batch_cost_usd"] == pytest.approx(first.cost_usd, abs=1e-8)
    assert (again.succeeded, again.failed) == (2, 0)
    kept = rows_by_id(tmp_path / "b" / "preferences.jsonl")
    assert [kept[i]["judge"]["usage"]["answered"] for i in ids] == [2, 2]
    assert [without_usage(kept[i]) for i in ids] == [without_usage(live[i]) for i in ids]


class _Exited(BaseException):
    """The process ends where the second Ctrl-C came (the engine raises ExitNow; the CLI exits 130 at once)."""


async def test_a_second_ctrl_c_while_collecting_then_collecting_again_counts_each_attempt_once(tmp_path, monkeypatch):
    import shutil

    from engine.errors import ExitNow
    from stages.judge.batch_collect import Collector
    from stages.judge.batch_run import BatchRun

    tags = ["OK0", "E500", "OK2", "OK3"]
    comp = tmp_path / "c.jsonl"
    ids = write(comp, [{"prompt": prompt(i, f" ROW-{t}"), "completions": marked(i)} for i, t in enumerate(tags)])
    out, after_exit = tmp_path / "b", tmp_path / "after-exit"
    runs, settled = [], []
    run, settle = BatchRun.run, Collector._settle

    async def capture(self):
        runs.append(self)
        return await run(self)

    def settle_then_ctrl_c_twice(self, row, *args):
        settle(self, row, *args)
        settled.append(row.id)
        if len(settled) == 3:  # rows 1-3 settled (row 2's retry planned), row 4 not yet: Ctrl-C, Ctrl-C
            runs[0]._on_signal("SIGINT")
            try:
                runs[0]._on_signal("SIGINT")
            except ExitNow as e:  # what the disk holds when the process ends here
                shutil.copytree(out, after_exit)
                raise _Exited(130) from e

    monkeypatch.setattr(BatchRun, "run", capture)
    monkeypatch.setattr(Collector, "_settle", settle_then_ctrl_c_twice)
    opts = RunOptions(**(FAST | {"max_attempts": 2}))
    async with run_in_process(fail_matching=[{"substring": "ROW-E500", "kind": "500"}]) as server:
        with pytest.raises(_Exited):
            await run_judge(comp, out, batch(server), opts)
        assert server.stats()["by_kind"]["judge"] == 4
        monkeypatch.setattr(Collector, "_settle", settle)
        again = await run_judge(comp, after_exit, batch(server), opts)  # collects the batch again
        requests = server.stats()["by_kind"]["judge"]
    assert requests == 4 + 1  # row 2 tried twice as --max-attempts 2 says, not failed after one try counted twice
    assert (again.succeeded, again.failed, again.counters.done_before) == (1, 1, 2)
    (error,) = read_jsonl(after_exit / "preferences.errors.jsonl")
    assert error["id"] == ids[1] and error["attempts"] == 2 and "after 2 attempts" in error["error"]
    kept = [r["id"] for r in read_jsonl(after_exit / "preferences.jsonl")]
    assert sorted(kept) == sorted(ids[:1] + ids[2:])  # each once: rows written before the exit are not rewritten
    state = orjson.loads((after_exit / "preferences.batches.json").read_bytes())
    assert state["usage"][ids[1]]["requests"] == 2 and all(c["collected"] for c in state["chunks"])
