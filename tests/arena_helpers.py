"""Test helpers for the arena: a tiny streaming OpenAI-compatible endpoint, and a headless Chromium.

`FakeEndpoint` serves /v1/models and streaming /v1/chat/completions from a thread, with behaviour per model:
"ok" streams a few words, "500" answers HTTP 500, ("slow", seconds) waits before answering.
`chromium()` launches Debian's chromium through Playwright (never Playwright's own browser download).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SKIP_VAR = "NGPT_SKIP_BROWSER_TESTS"


def chromium_path() -> str:
    """Debian's chromium; fails the test (or skips it when NGPT_SKIP_BROWSER_TESTS=1) when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get(SKIP_VAR) == "1":
        pytest.skip(f"chromium is not installed and {SKIP_VAR}=1")
    pytest.fail("the arena's browser tests need Debian's chromium: `apt-get install -y chromium` (CI's .ci/run "
                f"installs it), or set {SKIP_VAR}=1 to skip them knowingly", pytrace=False)


@contextmanager
def chromium():
    """A Playwright Browser on Debian's chromium; closed (its processes gone) on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class FakeEndpoint:
    """An OpenAI-compatible endpoint on 127.0.0.1 in a thread; `behaviour` maps model -> "ok", "500" or
    ("slow", seconds). `requests` collects each chat request's JSON body and Authorization header."""

    def __init__(self, behaviour: dict[str, object], words: str = "[JERRY] What is the deal with tickets?"):
        self.behaviour = behaviour
        self.words = words.split(" ")
        self.requests: list[dict] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def __enter__(self) -> FakeEndpoint:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.behaviour]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"body": body, "authorization": request.headers.get("Authorization")})
        mode = self.behaviour.get(body.get("model"), "404")
        if isinstance(mode, tuple) and mode[0] == "slow":
            await asyncio.sleep(mode[1])
            mode = "ok"
        if mode == "500":
            return web.json_response({"error": {"message": "the GPU caught fire (injected)", "type": "server_error",
                                                "code": 500}}, status=500)
        if mode == "404":
            return web.json_response({"error": {"message": f"model {body.get('model')} not found"}}, status=404)
        words = [f"{w} " for w in self.words] + [f"({body['model']})"]
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                                           "content": "".join(words)},
                                                   "finish_reason": "stop"}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": "stop" if last else None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        return response


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
