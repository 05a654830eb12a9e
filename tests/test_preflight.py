"""The modal profile's online preflight against a small endpoint this test controls (issue 27.3): a cold endpoint
is waited for up to the serving app's start-up timeout, and the SFT adapter it serves must be NGPT_SFT_ADAPTER's."""

from __future__ import annotations

import json
import logging
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import preflight
from serving.startup import STARTUP_TIMEOUT

SFT = "/vol/adapters/nothing-gpt/0123456789abcdef"


class Endpoint:
    """Answers 503 to the first `cold` GET /v1/models (Modal's proxy while the container starts), then the cards."""

    def __init__(self, cold: int, root: str = SFT):
        self.cold, self.root, self.polls = cold, root, 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                if self.path == "/v1/models":
                    endpoint.polls += 1
                    if endpoint.polls <= endpoint.cold:
                        return self._send(503, {"error": "starting"})
                    return self._send(200, {"data": [{"id": "base"}, {"id": "seinfeld", "root": endpoint.root}]})
                return self._send(200, {"id": self.path.rsplit("/", 1)[-1]})  # the judge's GET /models/<model>

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def modal_config(url: str) -> types.SimpleNamespace:
    """The parts of a PipelineConfig the preflight reads (the endpoint and the judge both at `url`)."""
    return types.SimpleNamespace(generate=types.SimpleNamespace(serve_url=url, model="seinfeld"),
                                 judge=types.SimpleNamespace(backend="openai", judge_url=url, judge_model="gpt-5"))


@pytest.fixture
def endpoint(monkeypatch, tmp_path):
    made: list[Endpoint] = []
    monkeypatch.setattr(preflight, "WAKE_POLL_S", 0.05)  # the real pause is 10 s
    monkeypatch.setattr(preflight, "_modal_problems", lambda: [])  # Modal's own calls are not under test here

    def make(cold: int, root: str = SFT):
        made.append(Endpoint(cold, root))
        env = {"SERVE_API_KEY": "k", "OPENAI_API_KEY": "sk-test", "NGPT_SFT_ADAPTER": SFT}
        return made[-1], modal_config(made[-1].url), env

    yield make
    for e in made:
        e.server.shutdown()


def test_a_cold_endpoint_is_woken_not_refused(endpoint, caplog):
    server, cfg, env = endpoint(cold=5)
    with caplog.at_level(logging.INFO, logger="pipelines.preflight"):
        assert preflight.online_problems(cfg, env) == []
    assert server.polls == 6  # five answers while it started, then the model list
    assert "waking the endpoint" in caplog.text
    assert STARTUP_TIMEOUT == 20 * 60  # the default wait is the serving app's start-up timeout


def test_an_endpoint_that_never_wakes_fails_within_the_bound(endpoint):
    server, cfg, env = endpoint(cold=10**6)
    start = time.monotonic()
    problems = preflight.online_problems(cfg, env, wake_timeout_s=0.5)
    assert time.monotonic() - start < 3.0
    assert len(problems) == 1 and "within 0.5 s, the app's start-up timeout" in problems[0]


def test_the_endpoint_must_serve_the_sft_adapter_the_samples_are_keyed_by(endpoint):
    server, cfg, env = endpoint(cold=0, root="/vol/adapters/nothing-gpt/fedcba9876543210")
    problems = preflight.online_problems(cfg, env)
    assert len(problems) == 1 and "serves 'seinfeld' from /vol/adapters/nothing-gpt/fedcba9876543210" in problems[0]
    assert "NGPT_SFT_ADAPTER=/vol/adapters/nothing-gpt/0123456789abcdef" in problems[0]


def test_the_sft_adapter_is_checked_first_offline_and_says_how_to_set_it(monkeypatch):
    monkeypatch.setattr("infra.modal_credentials.modal_credentials_problem", lambda env: None)
    cfg = modal_config("https://x--nothing-gpt-serve-serve.modal.run/v1")
    env = {"SERVE_API_KEY": "k", "OPENAI_API_KEY": "sk-test"}
    problems = preflight.offline_problems(cfg, env)
    assert len(problems) == 1 and problems[0].startswith("NGPT_SFT_ADAPTER is not set")
    assert "python -m pipelines.dpo upload --adapter DIR" in problems[0]
    not_hashed = preflight.offline_problems(cfg, {**env, "NGPT_SFT_ADAPTER": "/vol/adapters/nothing-gpt"})
    assert len(not_hashed) == 1 and "not a content-addressed adapter folder" in not_hashed[0]
    assert preflight.offline_problems(cfg, {**env, "NGPT_SFT_ADAPTER": SFT}) == []
