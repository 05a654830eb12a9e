"""The test server's scale models: OpenAI's tokens/requests-per-minute admission and Modal-like replicas.

Times are scaled down (a replica starts in 0.3 s, a bucket refills in a second) so each test takes under 2 s.
"""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from openai import AsyncOpenAI

from testserver import ServerOptions, run_in_process
from testserver.ratelimit import RateLimiter, duration
from testserver.responders import prompt_tokens

USER = [{"role": "user", "content": "Jerry finds a marble rye on the subway."}]
MAX_TOKENS = 40
COST = prompt_tokens(USER) + MAX_TOKENS  # what one n=1 request counts against the tokens per minute


async def ask(client: AsyncOpenAI, **kw):
    args = {"model": "seinfeld", "messages": USER, "n": 1, "max_completion_tokens": MAX_TOKENS} | kw
    return await client.chat.completions.with_raw_response.create(**args)


def client_of(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=5.0)


# -- tokens and requests per minute --------------------------------------------------------------------------


def test_the_token_bucket_admits_a_minute_of_tokens_at_once_then_the_limit_per_minute():
    now = [0.0]
    limiter = RateLimiter(rpm=None, tpm=6000, models=None, clock=lambda: now[0])
    burst = sum(limiter.admit("gpt-5", 100).ok for _ in range(100))
    assert burst == 60, "the bucket starts full: one minute's limit at once"
    admitted = 0
    for _ in range(600):  # one request offered every 0.1 s for a minute
        now[0] += 0.1
        admitted += limiter.admit("gpt-5", 100).ok
    assert admitted == 60, "then limit / 60 per second: 6,000 tokens over the minute"
    assert limiter.snapshot()["admitted"]["gpt-5"] == {"requests": 120, "tokens": 12_000}
    too_big = limiter.admit("gpt-5", 6001)
    assert not too_big.ok and too_big.kind == "too_large" and "retry-after-ms" not in too_big.headers
    assert limiter.admit("seinfeld", 100).ok, "each model has its own buckets"


def test_reset_durations_are_written_as_openai_writes_them():
    assert [duration(s) for s in (0, 0.02, 0.0004, 1, 1.5, 59.9994, 360, 90.25, 3725)] == [
        "0s", "20ms", "1ms", "1s", "1.5s", "59.999s", "6m0s", "1m30.25s", "1h2m5s"]


async def test_past_the_tokens_per_minute_a_request_gets_429_with_openais_body_and_headers():
    # 60 requests' worth a minute: the bucket holds 60 and refills one a second
    async with run_in_process(tpm_limit=60 * COST, rpm_limit=10_000, models=["seinfeld", "gpt-5"],
                              rate_limit_models=["seinfeld"]) as server, client_of(server) as client:
        first = await ask(client)
        h = first.headers
        assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-limit-requests"]) == (str(60 * COST), "10000")
        assert int(h["x-ratelimit-remaining-tokens"]) == 59 * COST and h["x-ratelimit-remaining-requests"] == "9999"
        assert h["x-ratelimit-reset-tokens"] == "1s", "one request's tokens take a second to refill"
        t0 = time.monotonic()
        await asyncio.gather(*(ask(client) for _ in range(59)))
        admitted = 60
        while True:  # the bucket is empty now, give or take what refilled meanwhile (one request a second)
            try:
                await ask(client)
                admitted += 1
            except openai.RateLimitError as caught:
                e = caught
                break
        assert 60 <= admitted <= 61 + (time.monotonic() - t0), "one minute's tokens at once, then the refill"
        assert e.status_code == 429 and e.body["code"] == "rate_limit_exceeded" and e.body["type"] == "tokens"
        assert e.body["message"].startswith(f"Rate limit reached for seinfeld in organization org-testserver on "
                                            f"tokens per min (TPM): Limit {60 * COST}")
        h = e.response.headers
        wait_ms = int(h["retry-after-ms"])
        assert 0 < wait_ms <= 1000 and h["retry-after"] == "1"
        assert int(h["x-ratelimit-remaining-tokens"]) < COST and h["x-ratelimit-reset-tokens"].endswith("s")
        assert (await ask(client, model="gpt-5")).http_response.status_code == 200, "gpt-5 is not limited here"
        await asyncio.sleep(wait_ms / 1000 + 0.02)
        assert (await ask(client)).http_response.status_code == 200, "admitted again once retry-after has passed"
        st = server.stats(log=False)
        assert st["rate_limits"]["refused"] == {"tokens": 1} and st["by_status"]["429"] == 1
        assert st["rate_limits"]["admitted"]["seinfeld"] == {"requests": admitted + 1, "tokens": (admitted + 1) * COST}
        assert st["by_fault"] == {"rate_limit_tokens": 1}


async def test_past_the_requests_per_minute_and_off_by_default():
    async with run_in_process(rpm_limit=3) as server, client_of(server) as client:
        for _ in range(3):
            assert "x-ratelimit-limit-tokens" not in (await ask(client)).headers, "no token limit, no token headers"
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(client)
        assert caught.value.body["type"] == "requests" and "(RPM): Limit 3, Used 3" in caught.value.body["message"]
        assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        server.control(rpm_limit=None)
        r = await ask(client)
        assert "x-ratelimit-limit-requests" not in r.headers and "rate_limits" not in server.stats(log=False)


# -- replicas --------------------------------------------------------------------------------------------------


async def test_the_autoscaler_adds_replicas_after_their_start_up_never_beyond_max_and_routes_to_all():
    async with run_in_process(replicas_min=1, replicas_max=3, replica_max_inputs=2, replica_startup_s=0.3,
                              replica_prefill_s=0.2, replica_scaledown_s=0.25) as server, client_of(server) as client:
        assert server.stats(log=False)["replicas"]["ready"] == 1, "replicas_min are warm at start"
        t0 = time.monotonic()
        await asyncio.gather(*(ask(client) for _ in range(12)))
        wall = time.monotonic() - t0
        rep = server.stats(log=False)["replicas"]
        assert rep["peak_replicas"] == 3 and rep["started"] == 3, "wanted ceil(12 / 2) = 6, capped at 3"
        added = [r for r in rep["per_replica"] if r["index"] > 0]
        assert all(r["ready_s"] - r["added_s"] == pytest.approx(0.3, abs=0.01) for r in added)
        assert all(r["served"] > 0 for r in rep["per_replica"]), "traffic reaches every replica"
        assert rep["per_replica"][0]["served"] >= 4, "the warm one serves while the others start"
        # 2 at 0-0.2 and 0.2-0.4 on the warm replica; 4 more at 0.3; the last 4 by 0.7 s (one replica: 1.2 s)
        assert 0.65 <= wall < 1.2, wall
        assert rep["queue_waits"]["max_s"] >= 0.3 and rep["queue_max"] >= 9
        # [ready, starting]: one added as the 3rd request arrives, one as the 5th, both ready 0.3 s later
        assert [p[1:] for p in rep["timeline"]][:5] == [[1, 0], [1, 1], [1, 2], [2, 1], [3, 0]]
        await asyncio.sleep(0.4)
        rep = server.stats(log=False)["replicas"]
        assert (rep["ready"], rep["stopped"]) == (1, 2), "idle replicas stop after the window, down to replicas_min"


async def test_a_replica_runs_max_inputs_at_once_each_for_prefill_plus_tokens():
    async with run_in_process(replicas_min=1, replicas_max=1, replica_max_inputs=2, replica_prefill_s=0.1,
                              replica_token_latency_s=0.01, sample_lines=[1, 1]) as server, client_of(server) as client:
        t0 = time.monotonic()
        answers = await asyncio.gather(*(ask(client, seed=i) for i in range(4)))
        wall = time.monotonic() - t0
        longest = [max(1, len(a.parse().choices[0].message.content) // 4) for a in answers]
        service = [0.1 + 0.01 * t for t in longest]
        rep = server.stats(log=False)["replicas"]
        assert rep["service_mean_s"] == pytest.approx(sum(service) / 4, abs=1e-3)
        # two run side by side, the other two wait for their slots: about two service times in all
        assert sorted(service)[1] + min(service) - 0.02 <= wall < sum(service), (wall, service)
        assert rep["queue_waits"]["waited"] == 2 and rep["peak_replicas"] == 1


async def test_a_client_that_gives_up_while_queued_leaves_no_slot_taken():
    async with run_in_process(replicas_min=1, replicas_max=1, replica_max_inputs=1, replica_prefill_s=0.3) as server:
        impatient = AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=0.1)
        async with impatient:
            results = await asyncio.gather(*(ask(impatient) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, openai.APITimeoutError) for r in results)
        await asyncio.sleep(0.3)  # the first one's service time ends (its handler was cancelled, its slot freed)
        rep = server.stats(log=False)["replicas"]
        assert (rep["running"], rep["queued"]) == (0, 0)
        async with client_of(server) as client:
            t0 = time.monotonic()
            await ask(client)
            assert time.monotonic() - t0 < 0.5, "the one slot is free again"


async def test_replicas_are_off_by_default_and_can_be_turned_on_at_runtime():
    async with run_in_process() as server, client_of(server) as client:
        await ask(client)
        assert "replicas" not in server.stats(log=False)
        server.control(replicas_max=2, replica_prefill_s=0.05, replica_models=["gpt-5"])
        t0 = time.monotonic()
        await ask(client)
        assert time.monotonic() - t0 < 0.05, "models outside replica_models are answered at once"
        await ask(client, model="gpt-5")  # no replica up (replicas_min 0): one starts at once (startup 0)
        rep = server.stats(log=False)["replicas"]
        assert (rep["started"], rep["served"]) == (1, 1)


def test_replica_and_rate_options_are_validated():
    with pytest.raises(ValueError, match="replicas_min must be an integer in 0..replicas_max"):
        ServerOptions(replicas_max=2, replicas_min=3)
    with pytest.raises(ValueError, match="replica_target_inputs must be an integer in 1..replica_max_inputs"):
        ServerOptions(replicas_max=2, replica_max_inputs=4, replica_target_inputs=5)
    with pytest.raises(ValueError, match="tpm_limit must be an integer >= 1 or null"):
        ServerOptions(tpm_limit=0)
    opts = ServerOptions(replicas_max=4, replicas_min=1, tpm_limit=1000, rate_limit_models=["gpt-5"])
    assert ServerOptions.from_mapping(opts.to_json()) == opts
