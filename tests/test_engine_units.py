"""Engine parts without a server: input rows, the checkpoint, the retry policy, options."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import httpx2
import openai
import orjson
import pytest

from engine.checkpoint import Checkpoint, fingerprint, repair_torn_tail
from engine.errors import ConfigError, MalformedResponse
from engine.options import RunOptions
from engine.retry import Backoff, classify, retry_after
from engine.rows import iter_rows, prompt_id, validate_prompt_row

MSGS = [{"role": "system", "content": "brief"}, {"role": "user", "content": "[JERRY] Hi."}]


def test_prompt_id_is_content_derived_and_order_free():
    assert prompt_id(MSGS) == prompt_id([dict(reversed(list(m.items()))) for m in MSGS])
    assert prompt_id(MSGS) != prompt_id(MSGS[:1] + [{"role": "user", "content": "[JERRY] Hi!"}])
    assert len(prompt_id("plain")) == 16


def _rows(tmp_path, text: str):
    path = tmp_path / "in.jsonl"
    path.write_text(text)

    async def collect():
        return [r async for r in iter_rows(path, validate_prompt_row)]

    return path, asyncio.run(collect())


def test_bad_rows_are_reported_with_file_line_and_problem(tmp_path):
    good = orjson.dumps({"prompt": MSGS, "completion": [{"role": "assistant", "content": "[GEORGE] Yo."}]}).decode()
    text = "\n".join([
        good,
        "{not json",
        '{"completion": "x"}',
        '{"prompt": ""}',
        '{"prompt": [{"role": "user", "content": 5}]}',
        '{"prompt": [{"role": "narrator", "content": "x"}]}',
        "[1, 2]",
        "",
        '{"prompt": "plain string prompt"}',
    ])
    path, rows = _rows(tmp_path, text)
    where = [getattr(r, "where", None) for r in rows]
    assert rows[0].data["reference"] == "[GEORGE] Yo."
    assert where[1].startswith(f"{path}:2: invalid JSON")
    assert where[2] == f'{path}:3: missing "prompt"'
    assert where[3] == f'{path}:4: "prompt" is an empty string'
    assert where[4] == f'{path}:5: "prompt"[0].content must be a string, got int'
    assert "role must be one of" in where[5] and where[5].startswith(f"{path}:6:")
    assert where[6] == f"{path}:7: expected a JSON object, got list"
    # the blank line 8 is skipped, line numbers stay true to the file
    assert rows[7].line == 9 and rows[7].data == {"prompt": "plain string prompt"}


def test_torn_last_line_is_cut_and_reported(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"a","x":1}\n{"id":"b","x":2}\n{"id":"c","x"')
    note = repair_torn_tail(path)
    assert note and f"{path}:3:" in note
    assert path.read_bytes() == b'{"id":"a","x":1}\n{"id":"b","x":2}\n'
    assert repair_torn_tail(path) is None  # clean now


def test_torn_line_with_newline_but_invalid_json_is_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"id":"b",\n')
    assert repair_torn_tail(path)
    assert path.read_bytes() == b'{"id":"a"}\n'


def test_scan_reads_ids_and_input_keys_from_results_and_skipped(tmp_path):
    ck = Checkpoint(tmp_path, "completions")
    ck.results.write_bytes(b'{"id":"aa","input":"k1","v":1}\n{"v":2,"id":"bb","input":"k2"}\n{"id":"dd","v":3}\n')
    ck.skipped.write_bytes(b'{"id":"cc","input":"k3","reason":"x"}\n')
    # fast path (id and input first), parsed path (other order), a record from before keys (None)
    assert ck.scan().done == {"aa": "k1", "bb": "k2", "cc": "k3", "dd": None}


def test_scan_names_a_damaged_middle_line(tmp_path):
    ck = Checkpoint(tmp_path, "completions")
    ck.results.write_bytes(b'{"id":"aa"}\ngarbage\n{"id":"cc"}\n')
    with pytest.raises(ConfigError, match=r"completions.jsonl:2: checkpoint line"):
        ck.scan()


def test_fingerprint_mismatch_is_refused_and_fresh_moves_aside(tmp_path):
    ck = Checkpoint(tmp_path, "completions")
    fp1 = fingerprint("generate", {"n": 3, "temperature": 0.9}, "abc")
    ck.check_fingerprint(fp1, fresh=False)
    ck.results.write_bytes(b'{"id":"aa"}\n')
    ck.check_fingerprint(fp1, fresh=False)  # same settings: resume is fine
    fp2 = fingerprint("generate", {"n": 3, "temperature": 0.7}, "abc")
    with pytest.raises(ConfigError, match=r"(?s)temperature: was 0.9, now 0.7.*--fresh"):
        ck.check_fingerprint(fp2, fresh=False)
    # another input file is not refused: rows are matched by content (see test_resume_by_content)
    ck.check_fingerprint(fingerprint("generate", {"n": 3, "temperature": 0.9}, "xyz"), fresh=False)
    ck.check_fingerprint(fp2, fresh=True)
    assert not ck.results.exists()
    kept = list((tmp_path / "previous").glob("completions-*/completions.jsonl"))
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"id":"aa"}\n'


def test_rows_without_fingerprint_are_refused(tmp_path):
    ck = Checkpoint(tmp_path, "completions")
    ck.results.write_bytes(b'{"id":"aa"}\n')
    with pytest.raises(ConfigError, match="no completions.fingerprint.json"):
        ck.check_fingerprint(fingerprint("generate", {}, "x"), fresh=False)


def test_second_process_is_refused_by_the_lock(tmp_path):
    ck = Checkpoint(tmp_path, "completions")
    ck.acquire_lock()
    try:
        code = textwrap.dedent(f"""
            from pathlib import Path
            from engine.checkpoint import Checkpoint
            from engine.errors import ConfigError
            try:
                Checkpoint(Path({str(tmp_path)!r}), "completions").acquire_lock()
            except ConfigError as e:
                print("REFUSED", e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.startswith("REFUSED") and "is being written by pid" in out
    finally:
        ck.release_lock()
    Checkpoint(tmp_path, "completions").acquire_lock()  # free again once released


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request, json={"error": {"message": "m"}})
    cls = {429: openai.RateLimitError, 400: openai.BadRequestError, 401: openai.AuthenticationError}.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls("m", response=response, body={"error": {"message": "m"}})


@pytest.mark.parametrize("status,retryable", [
    (408, True), (409, True), (429, True), (500, True), (503, True),
    (400, False), (401, False), (403, False), (404, False), (422, False),
])
def test_status_classification(status, retryable):
    decision = classify(_status_error(status))
    assert decision.retryable is retryable
    assert decision.status == status and f"HTTP {status}" in decision.reason


@pytest.mark.parametrize("status,run_fatal", [(401, True), (403, True), (404, True), (400, False), (422, False),
                                               (429, False), (500, False)])
def test_only_a_refused_key_or_model_stops_the_run(status, run_fatal):
    assert classify(_status_error(status)).run_fatal is run_fatal


def test_a_quota_429_is_not_retried_and_stops_the_run_but_a_rate_limit_429_is_retried():
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    quota = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                       "code": "insufficient_quota"}}
    limited = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    for body, headers, fatal in ((quota, {}, True), (limited, {"retry-after": "1"}, False), (limited, {}, False)):
        response = httpx2.Response(429, headers=headers, request=request, json=body)
        decision = classify(openai.RateLimitError("m", response=response, body=body))
        assert (decision.retryable, decision.run_fatal) == (not fatal, fatal)
    other = {"error": {"message": "Monthly quota exceeded for this key"}}  # another server's wording, no code
    response = httpx2.Response(429, request=request, json=other)
    assert classify(openai.RateLimitError("m", response=response, body=other)).run_fatal


def test_connection_timeout_and_malformed_are_retryable():
    request = httpx2.Request("POST", "http://127.0.0.1/")
    assert classify(openai.APIConnectionError(request=request)).retryable
    assert classify(openai.APITimeoutError(request=request)).retryable
    d = classify(MalformedResponse("no choices"))
    assert d.retryable and d.malformed
    assert not classify(KeyError("bug")).retryable


def test_retry_after_headers():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({}) is None
    assert classify(_status_error(429, {"retry-after": "3"})).retry_after_s == 3.0


def test_backoff_grows_with_jitter_and_is_capped():
    b = Backoff(base_s=1.0, cap_s=8.0, max_retry_after_s=5.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 8.0)]:
        delays = [b.delay(attempt, None) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert len(set(delays)) > 1  # jitter
    assert b.delay(1, 3.0) == 3.0
    assert b.delay(1, 60.0) == 5.0  # Retry-After capped


def test_options_validation_names_the_rule():
    with pytest.raises(ConfigError, match="concurrency must be >= 1, got 0"):
        RunOptions(concurrency=0)
    with pytest.raises(ConfigError, match="rps must be > 0"):
        RunOptions(rps=0)


def test_a_body_that_is_not_json_is_malformed_and_retryable():
    import json

    d = classify(json.JSONDecodeError("Unterminated string", "{", 0))
    assert d.retryable and d.malformed


def test_scan_handles_lines_longer_than_its_buffer(tmp_path, monkeypatch):
    import engine.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "SCAN_CHUNK", 16)  # every line spans several reads
    path = tmp_path / "x.jsonl"
    ids = [f"{i:016x}" for i in range(50)]
    texts = {i: "y" * (n * 7) for n, i in enumerate(ids)}
    path.write_bytes(b"".join(orjson.dumps({"id": i, "input": i[::-1], "text": texts[i]}) + b"\n" for i in ids))
    found: dict[str, str | None] = {}
    checkpoint.scan_ids(path, found)
    assert found == {i: i[::-1] for i in ids}


def test_status_line_shows_progress_rate_eta_failures_retries_tokens_and_cost():
    from engine.progress import status_line
    from engine.summary import Counters

    c = Counters(total=100, succeeded=40, failed=2, retries=7, tokens_in=1500, tokens_out=2500, cost_usd=1.234)
    line = status_line("judge", c, elapsed=21.0, in_flight=5)
    assert line.startswith("judge 42/100  42%")
    for part in ("2.00 rows/s", "ETA 29s", "in flight 5", "failed 2", "retries 7", "tokens 4.0k", "$1.23"):
        assert part in line


def test_off_a_terminal_progress_is_periodic_log_lines(caplog):
    import io

    from engine.progress import Progress
    from engine.summary import Counters

    caplog.set_level("INFO", logger="engine.progress")
    stream = io.StringIO()  # not a TTY: no bar, nothing written to the stream itself
    progress = Progress("judge", Counters(total=3, succeeded=1), every_s=10.0, stream=stream)
    progress.show()
    progress.finish()
    assert [r.getMessage()[:15] for r in caplog.records] == ["judge 1/3  33% "]
    assert stream.getvalue() == "" and progress.every_s == 10.0


def test_cool_down_is_logged_once_however_many_429s_extend_it(caplog):
    import time

    from engine.limits import CoolDown

    caplog.set_level("INFO", logger="engine.limits")
    cool = CoolDown()
    for _ in range(8):  # the 429s of 8 requests in flight, each arriving a moment later
        cool.pause(0.05)
    assert cool.pauses == 1 and len(caplog.records) == 1
    time.sleep(0.06)
    cool.pause(0.05)  # a new cool-down after the first ended
    assert cool.pauses == 2 and len(caplog.records) == 2


class _SlowStage:
    name = "slow"
    output_name = "out"

    def settings(self):
        return {}

    def validate(self, obj):
        return validate_prompt_row(obj)

    def stop_reason(self, counters):
        return None

    async def process(self, row, ctx):
        await ctx.request(lambda: asyncio.sleep(0.05))
        return {"prompt": row.data["prompt"]}


def _prompt_file(path, n):
    path.write_bytes(b"".join(orjson.dumps({"prompt": f"scene {i}"}) + b"\n" for i in range(n)))
    return path


def test_cancelling_a_run_from_outside_ends_it_promptly_and_keeps_what_was_written(tmp_path):
    from engine.runner import run_stage

    prompts = _prompt_file(tmp_path / "p.jsonl", 500)

    async def main():
        task = asyncio.create_task(run_stage(_SlowStage(), prompts, tmp_path / "out", RunOptions(concurrency=2,
                                                                                             progress=False)))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)  # a hang here was a bug: the producer blocked on a full queue

    asyncio.run(main())
    written = (tmp_path / "out" / "out.jsonl").read_bytes().splitlines()
    assert 0 < len(written) < 500 and all(orjson.loads(line)["id"] for line in written)
    # the lock was released: a rerun resumes and finishes
    from engine.runner import run_stage as again

    summary = asyncio.run(again(_SlowStage(), prompts, tmp_path / "out", RunOptions(concurrency=50, progress=False)))
    assert summary.counters.done_before == len(written) and summary.succeeded == 500 - len(written)


def test_an_input_read_error_fails_the_run_instead_of_hanging(tmp_path, monkeypatch):
    import engine.output as output
    import engine.runner as runner

    prompts = _prompt_file(tmp_path / "p.jsonl", 50)
    real = output.iter_rows

    async def broken(path, validate):
        n = 0
        async for item in real(path, validate):
            n += 1
            if n == 10:
                raise OSError("disk went away")
            yield item

    monkeypatch.setattr(output, "iter_rows", broken)  # what the producer reads the input with

    async def main():
        return await asyncio.wait_for(
            runner.run_stage(_SlowStage(), prompts, tmp_path / "out", RunOptions(concurrency=4, progress=False)), 10)

    with pytest.raises(OSError, match="disk went away"):
        asyncio.run(main())


def test_a_utf8_bom_before_the_first_row_is_not_part_of_it(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps({"prompt": "first"}) + b"\r\n" + orjson.dumps({"prompt": "b"}))

    async def collect():
        return [r async for r in iter_rows(path, validate_prompt_row)]

    rows = asyncio.run(collect())
    assert [(r.line, r.data) for r in rows] == [(1, {"prompt": "first"}), (2, {"prompt": "b"})]  # CRLF too


def test_a_failed_start_leaves_no_out_folder_or_lock_behind(tmp_path):
    from engine.errors import InputError
    from engine.runner import run_stage

    opts = RunOptions(progress=False)
    folder = tmp_path / "prompts"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a JSONL file"):
        asyncio.run(run_stage(_SlowStage(), folder, tmp_path / "a", opts))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n')
    with pytest.raises(InputError):
        asyncio.run(run_stage(_SlowStage(), bad, tmp_path / "b", RunOptions(progress=False, strict=True)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a folder that was there stays, with its rows; only the lock file this start made is removed
    out = tmp_path / "c"
    out.mkdir()
    (out / "out.jsonl").write_bytes(orjson.dumps({"id": "0123456789abcdef", "x": 1}) + b"\n")
    with pytest.raises(ConfigError, match="no out.fingerprint.json"):
        asyncio.run(run_stage(_SlowStage(), _prompt_file(tmp_path / "p.jsonl", 3), out, opts))
    assert sorted(p.name for p in out.iterdir()) == ["out.jsonl"]


def test_no_library_module_ends_the_process_itself():
    """One exit path: the engine raises engine.errors.ExitNow on a second Ctrl-C, and only the CLI turns it into
    exit 130 (pipelines/dpo.py); no library module calls os._exit."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    packages = ("engine", "stages", "steps", "pipelines", "training", "serving", "arena", "infra", "targets")
    calls = [f"{path.relative_to(root)}" for package in packages
             for path in (root / package).rglob("*.py") if "os._exit(" in path.read_text()]
    assert calls == []
    from engine.errors import ExitNow

    assert issubclass(ExitNow, KeyboardInterrupt)  # it leaves asyncio.run, which swallows other callback errors


def test_one_retry_loop_serves_the_live_requests_and_the_batch_api_calls():
    """engine.retry.with_retries is the only place a failure is classified and retried: the runner's requests and the
    Batch API's file and batch calls go through it (a second loop would drift from the policy)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    callers = sorted(str(path.relative_to(root)) for package in ("engine", "stages") for path in
                     (root / package).rglob("*.py") if "classify(" in path.read_text().replace("def classify(", ""))
    assert callers == ["engine/retry.py"]
    users = sorted(str(path.relative_to(root)) for package in ("engine", "stages") for path in
                   (root / package).rglob("*.py") if "with_retries(" in path.read_text())
    assert users == ["engine/retry.py", "engine/runner.py", "stages/judge/batch_run.py"]


async def test_the_shared_loop_gives_up_after_max_attempts_and_stops_waiting_when_interrupted():
    import asyncio
    import time

    import httpx
    import openai

    from engine.retry import Backoff, with_retries

    calls = 0

    async def failing():
        nonlocal calls
        calls += 1
        request = httpx.Request("POST", "http://x/v1/chat/completions")
        raise openai.InternalServerError("boom", response=httpx.Response(500, request=request), body=None)

    fast = Backoff(base_s=0.0, cap_s=0.0, max_retry_after_s=0.0)
    with pytest.raises(RuntimeError, match="gave up after 3"):
        await with_retries(failing, max_attempts=3, backoff=fast, interrupt=asyncio.Event(),
                           give_up=lambda d, n: RuntimeError(f"gave up after {n}"))
    assert calls == 3
    interrupt, slow = asyncio.Event(), Backoff(base_s=30.0, cap_s=30.0, max_retry_after_s=30.0)
    asyncio.get_running_loop().call_later(0.1, interrupt.set)

    async def stop_when_interrupted(attempt: int) -> None:
        if interrupt.is_set():
            raise RuntimeError("interrupted")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="interrupted"):
        await with_retries(failing, max_attempts=5, backoff=slow, interrupt=interrupt, give_up=lambda d, n: OSError(n),
                           before_attempt=stop_when_interrupted)
    assert time.monotonic() - started < 5  # not the 15-30 s backoff
