"""The install (tools/install.py): pip's settings reach uv, and constraints.txt pins every dependency we declare."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import install  # noqa: E402


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_pips_settings_reach_uv(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/srv/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/a/simple file:///srv/b/simple")
    monkeypatch.setenv("PIP_CONSTRAINT", "/srv/caps.txt")
    settings = install.pip_settings(sys.executable)
    assert settings["find-links"] == "/srv/wheels" and settings["constraint"] == "/srv/caps.txt"
    env = install.uv_env(settings)
    assert env["UV_FIND_LINKS"] == "/srv/wheels"
    assert env["UV_EXTRA_INDEX_URL"] == "file:///srv/a/simple file:///srv/b/simple"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"
    monkeypatch.setitem(os.environ, "UV_FIND_LINKS", "/mine")  # the user's own uv setting wins
    assert install.uv_env(settings)["UV_FIND_LINKS"] == "/mine"


def test_constraints_pin_every_declared_dependency_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in install.EXTRAS.split(","):
        declared += project["optional-dependencies"][extra]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        pins[_name(name)] = version
    from packaging.requirements import Requirement

    for requirement in declared:
        req = Requirement(requirement)
        name = _name(req.name)
        assert name in pins, f"constraints.txt does not pin {name} (pyproject.toml declares {requirement!r})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement!r}")


def test_the_installed_environment_is_the_constrained_one():
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    installed = {_name(n): v.split("+")[0] for n, _, v in (line.partition("==") for line in frozen.splitlines())
                 if v}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if _name(name) in installed:
            assert installed[_name(name)] == version, f"{name}: installed {installed[_name(name)]}, pinned {version}"
