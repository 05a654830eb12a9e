"""The dashboard shows a run's DAG: every step and every artifact, checked in headless Chromium.

Not in the default suite (it needs Debian's chromium and takes ~2 minutes). Run it with
    NGPT_DASHBOARD_CHECK=1 .venv/bin/python -m pytest tests/test_pipeline_dashboard.py -q
and NGPT_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the README's screenshot.
It runs the shipped local profile (reference judge) on 6 prompts into a temporary store, starts
`python -m pipelines.dpo dashboard`, opens the run's page over the Chrome DevTools protocol and waits
until the DAG is drawn.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("NGPT_DASHBOARD_CHECK") != "1", reason="set NGPT_DASHBOARD_CHECK=1"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(zenml_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SERVE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["ZENML_CONFIG_PATH"] = str(zenml_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard")
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["workdir"] = str(base / "work")
    config["deploy"]["state_dir"] = str(base / "serving")
    (base / "config.yaml").write_text(yaml.safe_dump(config))
    env = _env(base / "zenml")
    cli = [sys.executable, "-m", "pipelines.dpo"]
    server = None
    try:
        run = subprocess.run([*cli, "run", "--config", str(base / "config.yaml"), "--limit", "6"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=480)
        assert run.returncode == 0, run.stderr[-6000:]
        port = _free_port()
        log = (base / "dashboard.log").open("w")
        server = subprocess.Popen([*cli, "dashboard", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        run_url = _wait_for_run_url(base / "dashboard.log", server, port)
        yield run_url
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        from serving.local_deploy import stop_local

        stop_local(base / "serving")


def _wait_for_run_url(log: Path, server: subprocess.Popen, port: int) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-4000:]
        lines = [line for line in log.read_text().splitlines() if line.startswith("latest run: ")]
        if lines:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                return lines[0].removeprefix("latest run: ")
            except OSError:
                pass
        time.sleep(0.5)
    pytest.fail(f"the dashboard did not come up:\n{log.read_text()[-4000:]}")


def test_dashboard_shows_the_run_dag_with_steps_and_artifacts(dashboard):
    from steps.names import Artifact, Step

    shot = Path(os.environ.get("NGPT_DASHBOARD_SCREENSHOT") or tempfile.mktemp(suffix=".png"))
    text = asyncio.run(_render(dashboard, shot, wait_for=[s.value for s in Step]))
    for name in [*Step, *Artifact]:
        assert name.value in text, f"{name} is not on the run page"
    assert "Calculating DAG" not in text
    assert shot.stat().st_size > 10_000


async def _render(url: str, screenshot: Path, wait_for: list[str], timeout_s: float = 90) -> str:
    """Open `url` in headless Chromium, wait until every string in `wait_for` is on the page and the DAG
    layout is done, close the side panel, save a screenshot; returns the page's text."""
    import aiohttp

    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-")
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        page = await _first_page(port)
        async with aiohttp.ClientSession() as session, session.ws_connect(page, max_msg_size=0) as ws:
            cdp = _Cdp(ws)
            await cdp("Emulation.setDeviceMetricsOverride", width=1200, height=1150, deviceScaleFactor=1,
                      mobile=False)
            await cdp("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            text = ""
            while time.monotonic() < deadline:
                text = await cdp.text()
                if all(w in text for w in wait_for) and "Calculating DAG" not in text:
                    break
                await asyncio.sleep(1)
            await cdp("Runtime.evaluate", expression=(
                "[...document.querySelectorAll('button')].find(b => b.parentElement && "
                "b.parentElement.innerText.trim() === 'Run Insights')?.click()"))
            await asyncio.sleep(1)
            await cdp("Runtime.evaluate", expression=(
                "document.querySelector('.react-flow__controls-fitview')?.click()"))
            await asyncio.sleep(2)  # the fit animation
            shot = await cdp("Page.captureScreenshot", format="png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            return text
    finally:
        browser.terminate()
        browser.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


async def _first_page(port: int) -> str:
    for _ in range(100):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
            return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        except (OSError, StopIteration):
            await asyncio.sleep(0.2)
    raise RuntimeError("chromium did not open its DevTools port")


class _Cdp:
    """The few Chrome DevTools protocol calls the check needs, one at a time."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def __call__(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        async for message in self.ws:
            data = json.loads(message.data)
            if data.get("id") == self.next_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
        raise RuntimeError(f"{method}: the browser closed the connection")

    async def text(self) -> str:
        result = await self("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return result.get("result", {}).get("value", "")
