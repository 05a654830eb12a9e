"""No import circles between the project's modules (issue 20): counted over every import statement, lazy ones inside
functions and `TYPE_CHECKING` blocks included, since each says one module builds on another. A new circle fails
here naming its modules; break it by moving the shared part into a module both import, or the dispatch one
level up (stages/judge/run.py, engine/output.py's StageInfo, testserver's FaultOptions and BatchHost)."""

from __future__ import annotations

from pathlib import Path

from tests.containers import imports_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "stages", "steps", "pipelines", "training", "serving", "arena", "infra", "testserver", "targets")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `module` imports anywhere in its file (a package counts as its __init__)."""
    names = imports_of(module, path, local_entrypoints=True)
    return {name for name in names if name in known and name != module}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert len(graph) > 100 and graph["engine.runner"] >= {"engine.output", "engine.checkpoint"}
    assert circles(graph) == []


def test_the_check_sees_a_circle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    known = {"stages.judge.stage": ROOT / "stages/judge/stage.py", "stages.judge.batch": ROOT / "stages/judge/batch.py"}
    lazy = ROOT / "stages" / "judge" / "stage.py"
    assert "stages.judge.batch" not in imported("stages.judge.stage", lazy, known)
    assert "stages.judge.stage" in imported("stages.judge.batch", known["stages.judge.batch"], known)
