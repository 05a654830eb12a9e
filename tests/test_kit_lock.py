"""Processes that start at once share one kit build (training.tiny.build_lock): the others wait and reuse it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
        "from training.tiny import ensure_tiny_kit; print(ensure_tiny_kit().root)")


@pytest.mark.e2e  # two processes each building a kit (~25 s): in `make slow`
def test_two_processes_starting_at_once_build_the_tiny_kit_once(tmp_path):
    env = {**os.environ, "NGPT_TINY_KIT_DIR": str(tmp_path / "kits")}
    procs = [subprocess.Popen([sys.executable, "-c", CODE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=280) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    roots = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(roots) == 1 and Path(roots.pop(), "kit.json").is_file()
    builds = sum(err.count("building the tiny model kit") for _, err in outs)
    assert builds == 1, f"{builds} builds for two processes: the second must wait for the first and reuse its kit"
    assert not [p for p in (tmp_path / "kits").iterdir() if p.name.startswith(".building-")]
