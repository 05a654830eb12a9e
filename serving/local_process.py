"""Start and stop the local server (serving/local_server.py) as a subprocess.

`start_local_server(...)` starts `python -m serving.local_server --port 0 --ready-file F`, waits for the
ready file (or the process dying, or a timeout) and returns a handle with the URL. Tests and the
pipeline use it as a context manager; the local deploy starts it detached and records its pid in
a state folder so the next deploy can stop it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_MODULE = "serving.local_server"


@dataclass
class LocalServerHandle:
    """A running local server: `url` (root), `base_url` (for OpenAI clients), `stop()`."""

    url: str
    pid: int
    models: list[str]
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    workdir: Path | None = field(default=None, repr=False)  # ready file (and default log), removed on stop

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; a no-op once stopped."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
        else:
            stop_pid(self.pid, timeout_s=timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_server(
    base_dir: Path,
    adapters: Mapping[str, Path],
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    ready_timeout_s: float = 120.0,
    log_path: Path | None = None,
    detach: bool = False,
) -> LocalServerHandle:
    """Start the local server on `host:port` (0 = a free port) and wait until it listens.

    `adapters` maps served names ("seinfeld", "seinfeld-dpo") to adapter folders. With `detach`
    the server gets its own session, so it outlives the caller (the local deploy). Raises
    RuntimeError with the tail of the server log when it exits or does not come up in time.
    """
    if ready_timeout_s <= 0:
        raise ValueError(f"ready_timeout_s must be > 0; got {ready_timeout_s}")
    work = Path(tempfile.mkdtemp(prefix="ngpt-local-server-"))
    ready_file = work / "ready.json"
    log_path = Path(log_path) if log_path else work / "server.log"  # removed with `work` on stop
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", SERVER_MODULE, "--base", str(base_dir), "--host", host, "--port", str(port),
           "--ready-file", str(ready_file)]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=str(REPO_ROOT), start_new_session=detach)
    deadline = time.monotonic() + ready_timeout_s
    while not ready_file.is_file():
        if process.poll() is not None:
            raise RuntimeError(f"the local server exited with code {process.returncode} before it was ready; "
                               f"log {log_path}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise RuntimeError(f"the local server was not ready within {ready_timeout_s:g} s; "
                               f"log {log_path}:\n{_tail(log_path)}")
        time.sleep(0.1)
    info = json.loads(ready_file.read_text())
    keep_work = log_path.parent == work
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("local server %s ready at %s (pid %d)", info["models"], info["url"], process.pid)
    return LocalServerHandle(url=info["url"], pid=process.pid, models=info["models"], log_path=log_path,
                             process=process, workdir=work if keep_work else None)


def stop_pid(pid: int, *, timeout_s: float = 10.0) -> bool:
    """Stop our local server running as `pid` (SIGTERM, then SIGKILL); False if it was not running.

    Checks the process command line first (where /proc exists) so a recycled pid is never signalled.
    """
    if not _is_our_server(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    logger.warning("local server pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child (a server started in this process), else just probe.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():  # a zombie is not running
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return True


def _is_our_server(pid: int) -> bool:
    if pid <= 0 or not _alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():
        try:
            return SERVER_MODULE in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
    return True  # no /proc (macOS): trust the pid file


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
