"""The fault-injecting test server, exercised through the real openai SDK over loopback.

These tests pin down what the SDK raises for each fault, which the engine's error handling relies on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI, DefaultAioHttpClient

from testserver import (
    AVOID_MARKER,
    DEFAULT_MODELS,
    PREFER_MARKER,
    FaultKind,
    ServerError,
    ServerOptions,
    run_in_process,
    start_server,
)
from testserver.__main__ import build_parser, options_from_args
from testserver.faults import FailNext
from testserver.responders import prompt_tokens

USER = [{"role": "user", "content": "Jerry finds a marble rye on the subway."}]
JUDGE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "verdict", "strict": True, "schema": {"type": "object"}},
}


def judge_messages(bodies: dict[str, str]) -> list[dict[str, str]]:
    blocks = "\n".join(f'<completion id="{cid}">{body}</completion>' for cid, body in bodies.items())
    return [{"role": "system", "content": "Rank the scenes."}, {"role": "user", "content": blocks}]


@pytest.fixture
async def server():
    async with run_in_process() as s:
        yield s


@pytest.fixture
async def client(server):
    c = AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=5.0)
    yield c
    await c.close()


async def sample(client: AsyncOpenAI, **kw):
    args = {"model": "seinfeld", "messages": USER, "n": 3, "seed": 1, "temperature": 1.0} | kw
    return await client.chat.completions.create(**args)


async def test_models_n_choices_and_usage(client):
    models = await client.models.list()
    assert [m.id for m in models.data] == list(DEFAULT_MODELS)
    r = await sample(client)
    assert r.object == "chat.completion" and r.model == "seinfeld"
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3, "choices must differ"
    for c in r.choices:
        assert c.message.role == "assistant" and c.finish_reason == "stop"
        lines = c.message.content.split("\n")
        assert 2 <= len(lines) <= 4 and all(line.startswith("[") for line in lines)
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == 0 and u.completion_tokens_details.reasoning_tokens == 0


async def test_same_seed_same_text_and_max_tokens_truncates(client):
    a, b, c = await sample(client, seed=7), await sample(client, seed=7), await sample(client, seed=8)
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    assert [x.message.content for x in a.choices] != [x.message.content for x in c.choices]
    short = await sample(client, seed=7, max_completion_tokens=5)
    for full, cut in zip(a.choices, short.choices, strict=True):
        assert cut.finish_reason == "length"
        assert full.message.content.startswith(cut.message.content) and len(cut.message.content) <= 20


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("429", openai.RateLimitError, 429),
        ("quota", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
        ("400", openai.BadRequestError, 400),
        ("401", openai.AuthenticationError, 401),
        ("403", openai.PermissionDeniedError, 403),
        ("404", openai.NotFoundError, 404),
        ("422", openai.UnprocessableEntityError, 422),
    ],
)
async def test_status_faults_raise_the_sdk_error_once(server, client, kind, error, status):
    server.control(fail_next=[{"kind": kind, "count": 1}], retry_after=2)
    with pytest.raises(error) as info:
        await sample(client)
    assert info.value.status_code == status
    assert info.value.body["message"]  # OpenAI-style {"error": {"message", "type", "param", "code"}}
    if kind == "429":
        assert info.value.response.headers["retry-after"] == "2"
    if kind == "quota":
        assert info.value.code == "insufficient_quota" and "retry-after" not in info.value.response.headers
    assert len((await sample(client)).choices) == 3, "fail_next with count 1 fails exactly one request"


@pytest.mark.parametrize(
    ("transport", "error"), [("httpx", openai.APIConnectionError), ("aiohttp", openai.APITimeoutError)]
)
async def test_drop_is_a_connection_error(server, transport, error):
    # The SDK's aiohttp transport maps every aiohttp.ClientConnectionError to a timeout.
    http_client = DefaultAioHttpClient() if transport == "aiohttp" else None
    async with AsyncOpenAI(base_url=server.url, api_key="t", max_retries=0, http_client=http_client) as c:
        server.control(fail_next=[{"kind": "drop"}])
        with pytest.raises(openai.APIConnectionError) as info:
            await sample(c)
        assert type(info.value) is error
    assert server.stats()["by_status"] == {"0": 1}


async def test_hang_times_out_and_the_server_sees_the_client_leave(server):
    server.control(fail_next=[{"kind": "hang"}], hang_seconds=30)
    async with AsyncOpenAI(base_url=server.url, api_key="t", max_retries=0, timeout=0.3) as c:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await sample(c)
        assert time.monotonic() - started < 2
    for _ in range(50):  # the handler is cancelled when the client closes its connection
        if server.stats()["by_status"].get("499"):
            break
        await asyncio.sleep(0.02)
    assert server.stats()["by_status"] == {"499": 1} and server.stats()["in_flight"] == 0


async def test_malformed_bodies_escape_the_sdk_as_json_or_type_errors(server, client):
    server.control(fail_next=[{"kind": "malformed"}])
    with pytest.raises(json.JSONDecodeError):  # not an openai.APIError: the SDK does not wrap it
        await sample(client)
    server.control(fail_next=[{"kind": "no_choices"}])
    r = await sample(client)  # the SDK builds the object without validation
    assert r.choices is None


async def test_content_faults(server, client):
    server.control(fail_next=[{"kind": k} for k in ("fewer_choices", "empty", "refusal", "length_empty")])
    assert len((await sample(client)).choices) == 1
    assert all(not c.message.content.strip() for c in (await sample(client)).choices)
    refused = (await sample(client)).choices
    assert all(c.message.content is None and c.message.refusal for c in refused)
    cut = (await sample(client)).choices
    assert all(c.message.content == "" and c.finish_reason == "length" for c in cut)
    assert server.describe()["fail_next_remaining"] == []


async def test_judge_ranks_markers_then_length(server, client):
    bodies = {"A": "short", "B": f"long enough {AVOID_MARKER}", "C": "medium one", "D": f"x {PREFER_MARKER}"}
    r = await client.chat.completions.create(
        model="gpt-5", messages=judge_messages(bodies), response_format=JUDGE_FORMAT, reasoning_effort="low"
    )
    verdict = json.loads(r.choices[0].message.content)
    assert verdict["ranking"] == ["D", "C", "A", "B"]
    assert 1 <= verdict["confidence"] <= 5 and verdict["reason"]
    assert r.usage.completion_tokens_details.reasoning_tokens == 64  # "low"
    assert server.stats()["by_kind"] == {"judge": 1}


async def test_judge_faults_usage_and_errors(server, client):
    bodies = {chr(65 + i): "word " * (400 + i) for i in range(3)}  # > 1,024 prompt tokens: cached
    call = {"model": "gpt-5", "messages": judge_messages(bodies), "response_format": JUDGE_FORMAT}
    r = await client.chat.completions.create(**call)
    assert json.loads(r.choices[0].message.content)["ranking"] == ["C", "B", "A"]
    assert r.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens // 2
    server.control(fail_next=[{"kind": "non_permutation"}])
    ranking = json.loads((await client.chat.completions.create(**call)).choices[0].message.content)["ranking"]
    assert len(ranking) == 3 and sorted(set(ranking)) != ["A", "B", "C"]
    budget = await client.chat.completions.create(**call, max_completion_tokens=100)  # eaten by reasoning
    assert budget.choices[0].message.content == "" and budget.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="no completion blocks"):
        await client.chat.completions.create(model="gpt-5", messages=USER, response_format=JUDGE_FORMAT)


async def test_marked_samples_round_trip_through_the_judge(server, client):
    server.control(mark_choices=True)
    samples = [c.message.content for c in (await sample(client, n=4)).choices]
    assert sum(PREFER_MARKER in t for t in samples) == 1 and sum(AVOID_MARKER in t for t in samples) == 1
    ids = "ABCD"
    r = await client.chat.completions.create(
        model="gpt-5", messages=judge_messages(dict(zip(ids, samples, strict=True))), response_format=JUDGE_FORMAT
    )
    ranking = json.loads(r.choices[0].message.content)["ranking"]
    assert PREFER_MARKER in samples[ids.index(ranking[0])] and AVOID_MARKER in samples[ids.index(ranking[-1])]


async def test_gpt5_rejects_temperature_and_max_tokens_like_the_real_one(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        await sample(client, model="gpt-5", temperature=0.7)
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        await sample(client, model="gpt-5", temperature=None, max_tokens=50)
    assert (await sample(client, model="seinfeld", temperature=0.7, max_tokens=50)).choices


async def test_fail_matching_and_model_filter(server, client):
    server.control(fail_matching=[{"substring": "POISON", "kind": "422", "model": "seinfeld"}])
    poisoned = [{"role": "user", "content": "a POISON row"}]
    for _ in range(2):
        with pytest.raises(openai.UnprocessableEntityError):
            await sample(client, messages=poisoned)
    assert (await sample(client, messages=poisoned, model="seinfeld-dpo")).choices
    assert (await sample(client)).choices
    with pytest.raises(openai.NotFoundError):  # unknown model, like vLLM
        await sample(client, model="nope")


async def test_fault_rate_is_reproducible_with_a_seed():
    async def statuses(seed: int) -> list[int]:
        async with run_in_process(fault_rate=0.5, fault_kinds={"500": 1, "429": 1}, seed=seed) as s:
            async with AsyncOpenAI(base_url=s.url, api_key="t", max_retries=0) as c:
                for _ in range(30):
                    try:
                        await sample(c)
                    except openai.APIStatusError:
                        pass
            return [e["status"] for e in s.stats()["log"]]

    first = await statuses(3)
    assert first == await statuses(3)
    assert 5 <= first.count(200) <= 25 and {429, 500} <= set(first)


async def test_stats_count_concurrency_and_reset(server, client):
    server.control(latency=0.2)
    before = time.monotonic()
    await asyncio.gather(*(sample(client) for _ in range(10)))
    st = server.stats()
    assert st["requests"] == 10 and st["by_model"] == {"seinfeld": 10} and st["by_status"] == {"200": 10}
    assert st["in_flight_max"] == 10 and st["in_flight"] == 0
    assert st["usage"]["seinfeld"]["completion_tokens"] > 0
    for e in st["log"]:
        assert before <= e["t"] < e["t_end"] and e["t_end"] - e["t"] >= 0.19 and e["n"] == 3
    server.control(fail_next=[{"kind": "500", "count": 2}], log_size=4)
    server.control(latency=0.0, fault_rate=0.0, seed=9)  # other changes keep a pending fail_next queue
    assert server.describe()["fail_next_remaining"][0]["count"] == 2
    assert len(server.stats()["log"]) == 4, "the log is a ring of log_size entries"
    server.reset()
    assert server.stats()["requests"] == 0 and server.describe()["fail_next_remaining"] == []
    assert server.describe()["latency"] == 0.0, "reset restores the start options"
    with pytest.raises(ValueError, match="unknown option"):
        server.control(latencyy=1)


async def test_max_in_flight_answers_429_and_model_latency(server, client):
    server.control(max_in_flight=2, model_latency={"seinfeld": 0.2, "gpt-5": 0.0}, latency=5.0)
    results = await asyncio.gather(*(sample(client) for _ in range(5)), return_exceptions=True)
    assert [type(r) for r in results].count(openai.RateLimitError) == 3
    assert server.stats()["by_fault"] == {"max_in_flight": 3}
    assert all(e["t_end"] - e["t"] < 1 for e in server.stats()["log"]), "model_latency overrides latency"


def test_subprocess_server_ready_line_control_stats_and_stop():
    with pytest.raises(ValueError, match="fault_rate"):
        start_server(fault_rate=2)  # checked before a process is started
    with start_server(latency=0.05, models=["m1"]) as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}/v1"
        with pytest.raises(ServerError, match="unknown option"):
            srv.control(bogus=1)
        assert srv.control(fail_next=[{"kind": "503", "count": 2}])["fail_next_remaining"][0]["count"] == 2
        import openai as sync_sdk

        c = sync_sdk.OpenAI(base_url=srv.url, api_key="t", max_retries=0)
        before = time.monotonic()
        with pytest.raises(sync_sdk.InternalServerError):
            c.chat.completions.create(model="m1", messages=USER)
        st = srv.stats()
        assert st["by_fault"] == {"503": 1} and st["by_status"] == {"503": 1}
        assert before <= st["log"][0]["t"] <= time.monotonic(), "log times are this process's monotonic clock"
        srv.reset()
        assert c.chat.completions.create(model="m1", messages=USER).choices[0].message.content
        with pytest.raises(ServerError, match="cannot bind"):  # port taken: a clear start failure
            start_server(port=srv.port)
        c.close()
    assert srv.proc.poll() is not None


def test_server_exits_when_its_parent_dies_without_stop(tmp_path):
    script = "import os; from testserver import start_server; print(start_server().pid, flush=True); os._exit(0)"
    parent = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[1]
    )
    pid = int(parent.stdout.strip())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_options_round_trip_and_validation():
    opts = ServerOptions.from_mapping(
        {"fault_kinds": ["429", 500], "fail_next": [{"kind": "drop", "count": 2}], "retry_after": None}
    )
    assert ServerOptions.from_mapping(opts.to_json()) == opts
    with pytest.raises(ValueError, match="unknown fault kind 'boom'"):
        ServerOptions.from_mapping({"fail_matching": [{"substring": "x", "kind": "boom"}]})
    with pytest.raises(ValueError, match="named groups"):
        ServerOptions(completion_pattern="<c>(.*)</c>")
    cli = build_parser().parse_args(
        ["--latency", "0.5", "--fault-rate", "0.1", "--fault-kinds", "429:3,drop", "--fail-next", "500:2:gpt-5"]
        + ["--fail-matching", "422:a:b", "--retry-after", "-1", "--config", '{"seed": 5, "latency": 9}']
    )
    opts = options_from_args(cli)
    assert (opts.latency, opts.seed, opts.retry_after) == (0.5, 5, None), "flags override --config"
    assert opts.fault_kinds == {FaultKind.RATE_LIMIT: 3.0, FaultKind.DROP: 1.0}
    assert opts.fail_next[0] == FailNext(FaultKind.SERVER_ERROR, 2, "gpt-5")
    assert (opts.fail_matching[0].substring, opts.fail_matching[0].kind) == ("a:b", FaultKind.UNPROCESSABLE)


async def test_a_batch_past_the_enqueued_token_limit_fails_validation_with_token_limit_exceeded():
    """As OpenAI's queue does (openai-python issue 2084): accepted at create, failed at validation with nothing run,
    counted per model against the batches in progress; once they finish, the same file is accepted again."""
    messages = judge_messages({"A": "x" * 400, "B": "y" * 400})
    body = {"model": "gpt-5", "messages": messages, "response_format": JUDGE_FORMAT}
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body} for i in range(3)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    per_line = prompt_tokens(messages)
    async with run_in_process(batch_enqueued_token_limit=4 * per_line, batch_slow_polls=1) as server:
        c = AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=5.0)
        try:
            f = await c.files.create(file=("in.jsonl", data), purpose="batch")
            create = {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            first, second = await c.batches.create(**create), await c.batches.create(**create)
            assert (first.status, second.status) == ("validating", "validating")  # accepted at create
            assert (await c.batches.retrieve(first.id)).status == "in_progress"  # 3 lines of 4 allowed
            refused = await c.batches.retrieve(second.id)  # 3 + 3 > 4
            assert refused.status == "failed" and refused.request_counts.total == 0
            error = refused.errors.data[0]
            assert error.code == "token_limit_exceeded" and error.line is None
            expected = f"Enqueued token limit reached for gpt-5 in organization org-testserver. Limit: {4 * per_line:,}"
            assert expected in error.message
            while (await c.batches.retrieve(first.id)).status != "completed":
                await asyncio.sleep(0.01)
            third = await c.batches.create(**create)  # the queue is empty again
            assert (await c.batches.retrieve(third.id)).status == "in_progress"
        finally:
            await c.close()
        stats = server.stats()
    assert stats["by_kind"]["judge"] >= 3 and stats["batch"]["token_limit_exceeded"] == 1
    assert stats["batch"]["enqueued_tokens_max"] == 3 * per_line
    with pytest.raises(ValueError, match="batch_enqueued_token_limit must be an integer >= 1 or null"):
        ServerOptions(batch_enqueued_token_limit=0)
