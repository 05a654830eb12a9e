"""What a Modal container holds, and whether the code it runs can import within it.

A container holds only the local sources its app mounts (`add_local_python_source`) and the packages its image
installs (plus the Modal client, which Modal adds to every image). Each app declares both as module-level names
(`SOURCES`, `PACKAGES`) that its image is built from; `Container` reads them, and `import_problems` follows every
import a function can reach from the app's module, lazy ones inside function bodies included (a
`@app.local_entrypoint` body runs on the user's machine, not in the container, and is left out).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("engine", "stages", "steps", "pipelines", "training", "serving", "arena", "infra", "testserver",
               "targets", "tests")
MODAL_CLIENT = "modal"  # Modal installs its client into every image


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Container:
    """One image: the app module its functions live in, the packages it installs and the sources it mounts."""

    app_module: str
    packages: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def distributions(self) -> set[str]:
        """The image's distributions (canonical names), the Modal client included."""
        return {canonical(Requirement(spec).name) for spec in self.packages} | {MODAL_CLIENT}


def training_container() -> Container:
    from training import modal_app

    return Container("training.modal_app", modal_app.PACKAGES, modal_app.SOURCES)


def serving_container() -> Container:
    """The tools image: the smaller of the serving app's two, and both import the whole module."""
    from serving import modal_app

    return Container("serving.modal_app", modal_app.TOOLS_PACKAGES, modal_app.SOURCES)


def module_file(module: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_local_entrypoint(node: ast.AST) -> bool:
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "local_entrypoint":
            return True
    return False


def imports_of(module: str, path: Path, *, local_entrypoints: bool = False) -> list[str]:
    """Every module name `module` imports anywhere in its file, lazy imports and `TYPE_CHECKING` blocks included;
    the bodies of `@app.local_entrypoint` functions only with `local_entrypoints` (they run on the user's side)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = set() if local_entrypoints else {
        id(n) for top in ast.walk(tree) if _is_local_entrypoint(top) for n in ast.walk(top)}
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            if base == "__future__":
                continue
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


@cache
def _import_owners() -> dict[str, list[str]]:
    return {top: [canonical(d) for d in dists] for top, dists in metadata.packages_distributions().items()}


def dependency_closure(distributions: set[str]) -> set[str]:
    """The distributions installing `distributions` brings (as installed here), following their requirements."""
    seen: set[str] = set()
    todo = list(distributions)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return seen


def walk(container: Container, root: Path = ROOT) -> dict[str, list[str]]:
    """Each first-party module the container's code reaches, with what it imports. The walk follows mounted
    modules only: one outside the sources fails at its import, so nothing behind it runs."""
    reached: dict[str, list[str]] = {}
    todo = [container.app_module]
    while todo:
        module = todo.pop()
        path = module_file(module, root)
        if module in reached or path is None:
            continue
        reached[module] = imports_of(module, path)
        for name in reached[module]:
            if name.split(".")[0] in container.sources and module_file(name, root) is not None:
                todo.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2))  # a/__init__ too
    return reached


def import_problems(container: Container, root: Path = ROOT) -> list[str]:
    """What would fail at import in the container: first-party modules outside its sources, third-party modules no
    installed distribution provides. Each problem names the importing module and what it imports."""
    allowed = dependency_closure(container.distributions)
    problems: set[str] = set()
    for module, names in walk(container, root).items():
        for name in names:
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                if top not in container.sources and module_file(name, root) is not None:
                    problems.add(f"{module} imports {name}, but the container mounts only {container.sources}")
            elif top not in sys.stdlib_module_names:
                owners = _import_owners().get(top, [])
                if not any(owner in allowed for owner in owners):
                    what = f"distribution {'/'.join(owners)}" if owners else "no installed distribution"
                    problems.add(
                        f"{module} imports {name} ({what}), which the image does not install: add it to the "
                        f"app's PACKAGES or import it elsewhere"
                    )
    return sorted(problems)
