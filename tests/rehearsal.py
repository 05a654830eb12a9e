"""A replica of a Modal container, here: only the packages its image installs, only the sources it mounts, no path
to the checkout, and a local folder mounted at the volume's path.

- The environment is a virtual environment built from the app's `PACKAGES` (plus the Modal client Modal adds),
  cached under ~/.cache/nothing-gpt/rehearsal/<hash of the list and Python> so a rerun takes seconds. `torch==2.13.0`
  resolves to the CPU build on this machine, every other pin is the image's own.
- The sources are copies of the app's `SOURCES` packages (their .py files) in an empty folder, on PYTHONPATH alone.
- The interpreter starts with the image's environment (the NGPT_* names), not this machine's: no project install,
  no user site, cwd the sources folder.
- The volume: a private mount namespace (`unshare --mount`, root only) binds a local folder at NAMES.mount (/vol),
  so the functions read and write the very paths they use on Modal and nothing outside the namespace sees it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from infra.names import NAMES

CACHE = Path(os.environ.get("NGPT_REHEARSAL_CACHE", Path.home() / ".cache" / "nothing-gpt" / "rehearsal"))
CPU_TORCH = "torch==2.13.0"  # the CPU build on this machine's disk (the image's pin: CUDA on Modal)


def replica_packages(packages: tuple[str, ...]) -> list[str]:
    return [*packages, f"modal=={metadata.version('modal')}"]  # Modal adds its client to every image


def replica_python(packages: tuple[str, ...], cache: Path = CACHE) -> Path:
    """The interpreter of a virtual environment holding exactly `packages` (and the Modal client); built once."""
    wanted = replica_packages(packages)
    key = hashlib.sha256(json.dumps([sys.version_info[:2], wanted]).encode()).hexdigest()[:16]
    folder = cache / key
    python = folder / "bin" / "python"
    stamp = folder / "installed.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return python
    shutil.rmtree(folder, ignore_errors=True)
    _quiet([sys.executable, "-m", "venv", str(folder)])
    pip, env = _installer(python)
    if CPU_TORCH in wanted:
        _quiet([*pip, CPU_TORCH], env)  # first: nothing may pull the CUDA build before it
    _quiet([*pip, *wanted], env)
    stamp.write_text(json.dumps(wanted))
    return python


def _installer(python: Path) -> tuple[list[str], dict[str, str]]:
    """uv, as the Modal images install (`uv_pip_install`), with this machine's pip settings (tools/install.py):
    about a minute for both replicas where pip took 5 min 30 s. pip where the project's environment has no uv."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.is_file():
        return [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"], dict(os.environ)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import install

    settings = install.pip_settings(sys.executable)
    caps = [arg for path in settings.get(install.PIP_CONSTRAINT, "").split() for arg in ("-c", path)]
    return [str(uv), "pip", "install", "-q", "--python", str(python), *caps], install.uv_env(settings)


def _quiet(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run an install step; its output only where it failed."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def copy_sources(sources: tuple[str, ...], into: Path, root: Path) -> Path:
    """Copies of the mounted packages' .py files, as `add_local_python_source` ships them, in `into`."""
    for package in sources:
        shutil.copytree(root / package, into / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def can_mount() -> str | None:
    """Why the volume cannot be stood in for here (None when it can): it needs root and `unshare`."""
    if os.geteuid() != 0:
        return "the rehearsal mounts a folder at /vol in a private mount namespace: run it as root"
    if shutil.which("unshare") is None:
        return "the rehearsal needs `unshare` (util-linux)"
    return None


def run_in_replica(python: Path, sources_dir: Path, volume_dir: Path, env: dict[str, str], code: str,
                   *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter of the replica, `volume_dir` mounted at NAMES.mount, with `env` only."""
    mount = Path(NAMES.mount)
    made = not mount.exists()
    mount.mkdir(exist_ok=True)  # the mount point; the bind below is private to the namespace
    container_env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "PYTHONPATH": str(sources_dir),
        "PYTHONNOUSERSITE": "1",
        "LANG": "C.UTF-8",
        **env,
    }
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    try:
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh",
             str(volume_dir), str(mount), str(python), "-c", code, *args],
            env=container_env, cwd=sources_dir, capture_output=True, text=True, timeout=timeout,
        )
    finally:
        if made:
            mount.rmdir()


def last_json(out: subprocess.CompletedProcess[str], marker: str = "REHEARSAL ") -> dict:
    """The JSON the replica printed after `marker`, or an AssertionError carrying its output."""
    lines = [line for line in out.stdout.splitlines() if line.startswith(marker)]
    assert out.returncode == 0 and lines, f"exit {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix(marker))
