"""Start the test server in this process (`run_in_process`) or as a subprocess (`start_server`)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from testserver.app import FakeOpenAIServer
from testserver.options import ServerOptions

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def run_in_process(**options: Any) -> AsyncIterator[FakeOpenAIServer]:
    """Serve on the running event loop; yields the server (`.url`, `.port`, `.control()`, `.stats()`, `.reset()`).

    Cheapest for unit tests, but the server shares the loop (and its CPU) with the code under test:
    use `start_server` for benchmarks.
    """
    server = FakeOpenAIServer(ServerOptions.from_mapping(options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class ServerError(RuntimeError):
    """The test server subprocess failed to start, or a control call failed."""


class ServerProcess:
    """A handle on a test server subprocess started by `start_server`. Use it as a context manager."""

    def __init__(self, proc: subprocess.Popen[bytes], ready: dict[str, Any], stderr_path: str):
        self.proc = proc
        self.url: str = ready["url"]
        self.port: int = ready["port"]
        self.pid: int = ready["pid"]
        self.root_url = self.url.removesuffix("/v1")
        self._stderr_path = stderr_path

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.root_url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise ServerError(f"{method} {path} failed with {e.code}: {detail}") from e
        except urllib.error.URLError as e:
            raise ServerError(f"{method} {path}: test server at {self.root_url} unreachable: {e.reason}") from e

    def control(self, **options: Any) -> dict[str, Any]:
        """Change options at runtime (POST /_control); returns the options now in force."""
        return self._call("POST", "/_control", options)

    def options(self) -> dict[str, Any]:
        return self._call("GET", "/_control")

    def stats(self, *, log: bool = True, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Counters and the request log (GET /_stats)."""
        query = f"?log={int(log)}&since={since}" + (f"&limit={limit}" if limit else "")
        return self._call("GET", "/_stats" + query)

    def reset(self) -> dict[str, Any]:
        """Clear stats, restore the start options and clear every fault (POST /_reset)."""
        return self._call("POST", "/_reset", {})

    def stderr(self) -> str:
        return Path(self._stderr_path).read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        Path(self._stderr_path).unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(*, ready_timeout: float = 20.0, python: str | None = None, **options: Any) -> ServerProcess:
    """Run `python -m testserver` with `options` (ServerOptions fields) and wait for its ready line.

    Raises ValueError for invalid options (checked here first) and ServerError, with the server's
    stderr, when it exits or stays silent for `ready_timeout` seconds.
    """
    config = ServerOptions.from_mapping(options).to_json()  # validate before paying for a process
    fd, stderr_path = tempfile.mkstemp(prefix="testserver-", suffix=".stderr")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    # The server stops when its stdin closes: no orphan server if this process dies without stop().
    cmd = [python or sys.executable, "-m", "testserver", "--exit-on-stdin-eof", "--config", json.dumps(config)]
    with os.fdopen(fd, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    try:
        ready = json.loads(line)
        ServerProcess(proc, ready, stderr_path)  # checks the keys
    except (ValueError, KeyError, TypeError) as e:
        alive = proc.poll() is None
        if alive:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stdin is not None:
            proc.stdin.close()
        stderr = Path(stderr_path).read_text(errors="replace")[-4000:]
        Path(stderr_path).unlink(missing_ok=True)
        state = "was killed" if alive else f"exited with code {proc.returncode}"
        raise ServerError(
            f"test server did not print its ready line within {ready_timeout:g} s and {state}; "
            f"command: {cmd[:3]}; stdout: {line[:500]!r}; stderr:\n{stderr}"
        ) from e
    return ServerProcess(proc, ready, stderr_path)
