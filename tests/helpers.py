"""Helpers shared by the engine and stage tests: prompt files, CLI runs, output checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from engine.rows import prompt_id

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "prompts.jsonl"


def write_prompts(path: Path, n: int, *, start: int = 0) -> list[str]:
    """n distinct conversational prompt rows; returns their ids in order."""
    ids = []
    with open(path, "wb") as f:
        for i in range(start, start + n):
            prompt = [
                {"role": "system", "content": "You are a writer for the TV show Seinfeld."},
                {"role": "user", "content": f"[JERRY] Scene number {i}: what is the deal with row {i}?"},
            ]
            ids.append(prompt_id(prompt))
            f.write(orjson.dumps({"prompt": prompt, "completion": [{"role": "assistant", "content": f"[GEORGE] {i}"}]}))
            f.write(b"\n")
    return ids


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.dpo", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("SERVE_URL", None)
    return e


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(cli(*args), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    """Wait until `path` has at least `count` newline-terminated lines; returns how many it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= count:
            return n
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {count} lines in {timeout}s")
