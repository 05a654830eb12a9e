"""Live judging keeps to the account's per-minute budgets: counted as OpenAI counts at admission (prompt tokens plus
the completion budget), corrected by the responses' x-ratelimit headers, checked against the test server's
OpenAI-style limiter."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from engine.limits import Budget, Pacer
from engine.options import RunOptions
from stages.judge import JudgeSettings, run_judge
from testserver import PREFER_MARKER, run_in_process

BRIEF = "You are a writer for the TV show Seinfeld. Continue the scene with natural dialogue."
FAST = {"progress": False, "backoff_base_s": 0.0, "backoff_cap_s": 0.0, "fsync_every_s": 0.05}
BURST = 100  # requests a full token bucket admits at once, by construction of the limit below
ROWS = BURST + 5  # the rest must wait for the bucket: 5 requests at BURST / 60 a second, ~3 s


class Clock:
    """time.monotonic and asyncio.sleep for engine.limits, advancing only when slept."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        monkeypatch.setattr("engine.limits.time.monotonic", lambda: self.now)

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)
            self.now += seconds

        monkeypatch.setattr("engine.limits.asyncio.sleep", sleep)


def test_a_budget_admits_a_minutes_worth_then_refills_at_its_rate(monkeypatch):
    clock = Clock(monkeypatch)
    budget = Budget(600)  # 10 a second
    assert budget.wait_s(600) == 0
    budget.take(600)
    assert budget.wait_s(5) == pytest.approx(0.5)
    clock.now += 0.5
    assert budget.wait_s(5) == 0
    budget.observe(limit=None, remaining=1)  # the server has seen less left (another client of the key)
    assert budget.level == 1 and budget.wait_s(5) == pytest.approx(0.4)
    budget.observe(limit=300, remaining=None)  # a lower account limit than configured: paced to it
    assert budget.per_minute == 300 and budget.wait_s(6) == pytest.approx(1.0)
    budget.observe(limit=10_000, remaining=10_000)  # never above what this side knows
    assert budget.per_minute == 300 and budget.level == pytest.approx(1)


async def test_the_pacer_waits_for_tokens_and_requests_in_arrival_order(monkeypatch):
    clock = Clock(monkeypatch)
    pacer = Pacer(None, rpm=120, tpm=6_000)  # 2 requests and 100 tokens a second
    started = []

    async def one(i: int, tokens: int) -> None:
        await pacer.before_request(tokens)
        started.append((i, round(clock.now - 1000.0, 3)))

    await asyncio.gather(one(0, 6_000), one(1, 500), one(2, 0))
    # 0 empties the token bucket; 1 waits 5 s for 500 tokens; 2 (no tokens) queues behind it, first come first served
    assert started == [(0, 0.0), (1, 5.0), (2, 5.0)]
    assert pacer.waited_s == pytest.approx(5.0)
    pacer.observe({"X-RateLimit-Remaining-Requests": "0", "x-ratelimit-limit-tokens": "6000"})
    await one(3, 0)
    assert started[-1] == (3, 5.5)  # the server said no request was left: one refills in half a second


def _rows(n: int) -> bytes:
    out = []
    for i in range(n):
        prompt = [{"role": "system", "content": BRIEF}, {"role": "user", "content": f"[JERRY] Scene {i}: the deal?"}]
        completions = [f"[JERRY] Scene {i} good. {PREFER_MARKER}", f"[GEORGE] Scene {i}, a plain line.",
                       f"[ELAINE] Scene {i}, another plain line, a little longer."]
        out.append(orjson.dumps({"prompt": prompt, "completions": completions}) + b"\n")
    return b"".join(out)


async def _judge(tmp_path, name: str, server_tpm: int | None, client_tpm: int | None,
                 attempts: int = 6) -> tuple[dict, float, dict]:
    completions = tmp_path / "completions.jsonl"
    completions.write_bytes(_rows(ROWS))
    async with run_in_process(tpm_limit=server_tpm) as server:
        settings = JudgeSettings(judge_model="gpt-5", judge_url=server.url, max_completion_tokens=2_000)
        options = RunOptions(concurrency=8, tpm=client_tpm, max_attempts=attempts, **FAST)
        t0 = time.perf_counter()
        summary = await run_judge(completions, tmp_path / name, settings, options, api_key="k")
        elapsed = time.perf_counter() - t0
        stats = server.stats()
    return stats["rate_limits"], elapsed, summary.counters.__dict__


async def test_live_judging_keeps_to_the_token_budget_where_unpaced_judging_is_refused(tmp_path, monkeypatch):
    # The server's own count of one request's tokens sets a limit that admits BURST requests at once.
    probe, _, _ = await _judge(tmp_path, "probe", server_tpm=10**9, client_tpm=None)
    per_request = probe["admitted"]["gpt-5"]["tokens"] / probe["admitted"]["gpt-5"]["requests"]
    tpm = int(per_request * BURST)

    # The control, one try per request: without the pacer the limit refuses what passes the bucket.
    limits, _, unpaced = await _judge(tmp_path, "unpaced", server_tpm=tpm, client_tpm=None, attempts=1)
    assert limits["refused"].get("tokens", 0) >= 3 and unpaced["failed"] >= 3

    # Configured ten times too high, the pacer learns the account's limit from the answers' x-ratelimit headers.
    seen: list[float | None] = []
    observe = Budget.observe
    monkeypatch.setattr(Budget, "observe", lambda self, limit, remaining: seen.append(limit) or observe(
        self, limit, remaining))
    _, _, adapted = await _judge(tmp_path, "adapted", server_tpm=tpm, client_tpm=10 * tpm)
    monkeypatch.setattr(Budget, "observe", observe)
    assert adapted["succeeded"] == ROWS and seen and set(seen) == {tpm}

    limits, paced_s, paced = await _judge(tmp_path, "paced", server_tpm=tpm, client_tpm=tpm)
    assert paced["succeeded"] == ROWS and paced["failed"] == 0
    assert limits["refused"].get("tokens", 0) <= 1, limits  # within the budget: (nearly) no 429
    assert paced["extra"].get("budget_wait_s", 0) > 0
    # No faster than the budget allows: ROWS - BURST requests' tokens at tpm / 60 a second.
    assert paced_s >= 0.7 * (ROWS - BURST) * per_request / (tpm / 60)


def test_the_configured_tier_sets_the_judges_budgets_and_explicit_values_win(tmp_path):
    import yaml

    from pipelines.config import PipelineConfigError, load_config
    from stages.judge.tiers import TIERS
    from tests.helpers import ROOT

    cfg = load_config(profile="modal", env={})
    tier = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())["judge"]["tier"]
    assert (cfg.judge_run.rpm, cfg.judge_run.tpm) == (TIERS[tier].rpm, TIERS[tier].tpm)
    assert cfg.judge.batch_max_enqueued_tokens == TIERS[tier].batch_max_enqueued_tokens

    def load(**judge):
        raw = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())
        raw["judge"].update(judge)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(config_file=path, env={})

    assert load(tier=3, tpm=123_456).judge_run.tpm == 123_456 and load(tier=3).judge_run.rpm == TIERS[3].rpm
    assert load(tier=None).judge_run.tpm is None  # null: no pacing
    with pytest.raises(PipelineConfigError, match="judge.tier must be one of 1, 2, 3, 4, 5"):
        load(tier=7)
