"""The package's import graph: no circles, and no project import hidden inside a function (cli.py excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

import landmarks

PACKAGE = Path(landmarks.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported landmarks module, line) for each import; only those outside functions when top_level_only."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("landmarks"):
                if in_function != top_level_only:
                    names = [f"{child.module}.{a.name}" for a in child.names]
                    found.extend((n, child.lineno) for n in [child.module, *names])
            elif isinstance(child, ast.Import):
                if in_function != top_level_only:
                    found.extend((a.name, child.lineno) for a in child.names if a.name.startswith("landmarks"))
            visit(child, inner)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t, _ in _imports(ast.parse(path.read_text()), top_level_only=True) if t in modules}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}  # a package's own __init__
    return graph


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_project_imports_sit_at_the_top_of_modules():
    hidden = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target}"
        for path in PACKAGE.rglob("*.py") if path.name != "cli.py"
        for target, line in _imports(ast.parse(path.read_text()), top_level_only=False)
    ]
    assert not hidden, "project imports inside functions: " + "; ".join(hidden)


def test_the_checker_sees_a_circle_and_a_hidden_import():
    """The two checks above can fail: a made-up pair of modules trips both."""
    tree = ast.parse("from landmarks.b import x\n\ndef f():\n    from landmarks.c import y\n")
    assert [t for t, _ in _imports(tree, top_level_only=True)][0] == "landmarks.b"
    assert [t for t, _ in _imports(tree, top_level_only=False)][0] == "landmarks.c"
