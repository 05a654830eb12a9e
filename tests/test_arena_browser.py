"""The arena in a real headless browser (Debian's chromium, driven by Playwright).

- against the real local vLLM: load the page, sample, vote, see the names and the tally change, find the vote
  line on disk; two browser sessions sampling and voting at once;
- the `arena` command itself against a small streaming endpoint: a server error shown on the page (no
  traceback), a cold start shown as "waking the model", a sample over the session's limit refused with a
  message, and the API key nowhere on the page, in the log or in the votes.
Chromium missing fails these tests with how to install it; NGPT_SKIP_BROWSER_TESTS=1 skips them knowingly.
NGPT_ARENA_SCREENSHOT=docs/arena.png saves the README's screenshot from the first test.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from arena.duel import Sampling
from arena.endpoint import Endpoint
from arena.scenes import load_scenes
from arena.votes import VoteLog
from serving.local_vllm import free_port
from tests.arena_helpers import FakeEndpoint, chromium, chromium_path, read_lines

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-arena-test-secret-0123456789"
VIEWPORT = {"width": 1200, "height": 1000}

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_chromium():
    chromium_path()  # fails (or skips on request) before any server starts


@contextmanager
def arena_page(endpoint: Endpoint, votes: Path):
    """The arena's page served in this process (as `arena` serves it), stopped on exit."""
    from arena.page import Arena, ArenaSettings, build_page, serve

    arena = Arena(endpoint, load_scenes(), VoteLog(votes), ArenaSettings(sampling=Sampling(max_tokens=48)))
    page = build_page(arena)
    try:
        yield serve(page, "127.0.0.1", free_port())
    finally:
        arena.close_client()
        page.close()
        arena.votes.close()


def sample(page, url: str | None = None) -> tuple[str, str]:
    """Load (when `url`), wait for a scene, sample both models, wait until the vote buttons open; the texts."""
    if url:
        page.goto(url)
    page.wait_for_function("document.querySelector('#scene textarea')?.value.length > 0", timeout=60_000)
    page.click("#sample")
    page.wait_for_function("!document.querySelector('#vote-left').disabled", timeout=120_000)
    return page.locator("#left textarea").input_value(), page.locator("#right textarea").input_value()


def shown(text: str) -> str:
    """Text as a textarea holds it (the browser turns \r\n and \r into \n; the tiny model writes any byte)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def wait_for_status(page, text: str, timeout_ms: int = 60_000) -> str:
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({json.dumps(text)})",
                           timeout=timeout_ms)
    return page.inner_text("#status")


def test_sample_vote_and_see_names_tally_and_the_vote_on_disk_against_local_vllm(local_vllm, tmp_path):
    votes = tmp_path / "votes.jsonl"
    endpoint = Endpoint(local_vllm.base_url, "test", local_vllm.api_key)
    with arena_page(endpoint, votes) as url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        outside: list[str] = []  # the page must work offline: no fonts, scripts or analytics from elsewhere
        page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else outside.append(r.url))
        left, right = sample(page, url)
        assert page.is_enabled("#vote-right") and page.is_enabled("#vote-tie") and page.is_enabled("#vote-both-bad")
        names_before = page.inner_text("#left-name") + page.inner_text("#right-name")
        assert "seinfeld" not in names_before  # blind until the vote
        assert "Tally of 0 votes" in page.inner_text("#tally")
        page.click("#vote-left")
        status = wait_for_status(page, "Vote recorded")
        shown_left = page.inner_text("#left-name").split(":", 1)[1].split("·")[0].strip()
        shown_right = page.inner_text("#right-name").split(":", 1)[1].split("·")[0].strip()
        assert {shown_left, shown_right} == {"seinfeld", "seinfeld-dpo"}
        assert f"({shown_left} wins)" in status
        tally = page.inner_text("#tally")
        assert "Tally of 1 vote" in tally and "95% interval" in tally
        assert not page.is_enabled("#vote-left")  # one vote per round
        if os.environ.get("NGPT_ARENA_SCREENSHOT"):
            shot = Path(os.environ["NGPT_ARENA_SCREENSHOT"])
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        content = page.content() + urllib.request.urlopen(url + "config", timeout=10).read().decode()
    assert local_vllm.api_key not in content
    assert outside == []
    (line,) = read_lines(votes)
    assert line["vote"] == "left" and line["winner"] == shown_left and line["loser"] == shown_right
    assert line["left"]["model"] == shown_left
    assert (shown(line["left"]["text"]), shown(line["right"]["text"])) == (left, right)
    assert line["left"]["finish_reason"] and line["right"]["finish_reason"]
    assert line["sampling"]["max_tokens"] == 48 and line["sampling"]["seed"] is not None
    assert line["prompt"][0]["role"] == "system" and line["source"] == "held-out"
    assert local_vllm.api_key not in votes.read_text()


def test_two_browser_sessions_sample_and_vote_at_once(local_vllm, tmp_path):
    votes = tmp_path / "votes.jsonl"
    endpoint = Endpoint(local_vllm.base_url, "test", local_vllm.api_key)
    with arena_page(endpoint, votes) as url, chromium() as browser:
        pages = [browser.new_context(viewport=VIEWPORT).new_page() for _ in range(2)]
        for page in pages:
            page.goto(url)
            page.wait_for_function("document.querySelector('#scene textarea')?.value.length > 0", timeout=60_000)
        for page in pages:  # both rounds stream at the same time
            page.click("#sample")
        for page in pages:
            page.wait_for_function("!document.querySelector('#vote-left').disabled", timeout=120_000)
        texts = [(p.locator("#left textarea").input_value(), p.locator("#right textarea").input_value())
                 for p in pages]
        pages[0].click("#vote-right")
        pages[1].click("#vote-both-bad")
        for page in pages:
            wait_for_status(page, "Vote recorded")
        pages[0].reload()
        pages[0].wait_for_function("document.querySelector('#tally')?.innerText.includes('Tally of 2 votes')",
                                   timeout=60_000)
        assert "1 both bad" in pages[0].inner_text("#tally")
    lines = read_lines(votes)
    assert sorted(r["vote"] for r in lines) == ["both_bad", "right"]
    assert len({r["session"] for r in lines}) == 2 and len({r["round"] for r in lines}) == 2
    by_vote = {r["vote"]: r for r in lines}
    for vote, (left, right) in zip(("right", "both_bad"), texts, strict=True):  # each page's own round
        assert (shown(by_vote[vote]["left"]["text"]), shown(by_vote[vote]["right"]["text"])) == (left, right)
    assert by_vote["both_bad"]["winner"] is None


@pytest.mark.e2e  # whole-process work (~10-25 s) moved to `make slow` to keep `make test` under 10 minutes
def test_the_arena_command_shows_server_errors_and_a_waking_model_and_keeps_the_key_secret(tmp_path):
    votes, log_path = tmp_path / "votes.jsonl", tmp_path / "arena.log"
    behaviour: dict[str, object] = {"seinfeld": "ok", "seinfeld-dpo": "500"}
    env = {k: v for k, v in os.environ.items() if k != "SERVE_URL"} | {"SERVE_API_KEY": KEY}
    with FakeEndpoint(behaviour) as endpoint, log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.dpo", "arena", "--serve-url", endpoint.base_url, "--port", "0",
             "--votes", str(votes), "--wake-after", "1", "--state-dir", str(tmp_path / "serving"),
             "--samples-per-minute", "2"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "the arena printed no URL within 120 s"
            started = proc.stdout.readline()
            assert started, f"the arena exited ({proc.poll()}):\n{log_path.read_text()[-3000:]}"
            url = json.loads(started)["url"]
            with chromium() as browser:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url)
                page.wait_for_function("document.querySelector('#scene textarea')?.value.length > 0",
                                       timeout=60_000)
                page.click("#sample")
                status = wait_for_status(page, "The endpoint failed")
                assert "the endpoint answered 500: the GPU caught fire (injected)" in status
                body = page.inner_text("body")
                assert "Traceback" not in body and "seinfeld-dpo" in body  # names shown: nothing to vote on
                # the round ends when the other side has finished too: sampling opens again, voting stays shut
                page.wait_for_function("!document.querySelector('#sample').disabled", timeout=30_000)
                assert not page.is_enabled("#vote-left")

                behaviour["seinfeld-dpo"] = ("slow", 4)  # a cold endpoint: no token for a while
                page.click("#sample")
                assert "a few minutes" in wait_for_status(page, "Waking the model")
                assert "waking the model" in (page.inner_text("#left-name") + page.inner_text("#right-name"))
                page.wait_for_function("!document.querySelector('#vote-tie').disabled", timeout=60_000)
                page.click("#vote-tie")
                wait_for_status(page, "Vote recorded")
                requests_before = len(endpoint.requests)
                page.click("#sample")  # a third round within the minute: over --samples-per-minute 2
                slow_down = wait_for_status(page, "Slow down")
                assert "2 rounds in the last minute" in slow_down and "sample again in" in slow_down
                assert len(endpoint.requests) == requests_before  # nothing was asked of the endpoint
                content = page.content() + urllib.request.urlopen(url + "config", timeout=10).read().decode()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                pytest.fail("the arena did not stop on Ctrl-C within 30 s")
    assert code == 0
    logged = log_path.read_text()
    assert "the arena is at" in logged and "the endpoint answered 500" in logged
    for text in (content, logged, votes.read_text()):
        assert KEY not in text
    assert {r["authorization"] for r in endpoint.requests} == {f"Bearer {KEY}"}  # the key was sent, only there
    (line,) = read_lines(votes)
    assert line["vote"] == "tie" and line["winner"] is None
