"""The package's import graph: the documented layer order, no circles, and no project import hidden inside a
function (cli.py excepted)."""

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


# Layers, bottom to top (the README's code layout): a module's layer is its longest matching prefix.
LAYER_OF = {
    "landmarks.errors": "base", "landmarks.utils": "base", "landmarks": "base",
    "landmarks.store": "store",
    "landmarks.models": "models",
    "landmarks.config": "config",
    "landmarks.data": "data",
    "landmarks.recognize.index": "scoring", "landmarks.recognize.confidence": "scoring",
    "landmarks.recognize.prediction": "scoring", "landmarks.recognize.geo": "scoring",
    "landmarks.run_folder": "run_folder",
    "landmarks.recognize": "recognize",
    "landmarks.evaluate": "evaluate",
    "landmarks.export": "export",
    "landmarks.serve": "serve",
    "landmarks.train": "train",
    "landmarks.cli": "cli", "landmarks.__main__": "cli",
}
# Which layers each layer may import (besides its own): downwards only.
ALLOWED = {
    "base": set(),
    "store": {"base"},
    "models": {"base"},
    "config": {"base", "models"},
    "data": {"base", "config"},
    "scoring": {"base", "config", "data"},
    "run_folder": {"base", "store", "models", "config", "scoring"},
    "recognize": {"base", "store", "models", "config", "data", "scoring", "run_folder"},
    "evaluate": {"base", "config", "data", "scoring", "run_folder", "recognize"},
    "export": {"base", "models", "data", "scoring", "run_folder", "recognize", "evaluate"},
    "serve": {"base", "store", "data", "scoring", "run_folder", "recognize", "export"},
    "train": {"base", "store", "models", "config", "data", "scoring", "run_folder", "recognize", "evaluate"},
    "cli": set(LAYER_OF.values()) - {"cli"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:end])]
    raise AssertionError(f"{module} is in no layer of LAYER_OF: add it to the table and the README")


def test_every_import_follows_the_layer_order():
    wrong = [f"{source} ({_layer(source)}) imports {target} ({_layer(target)})"
             for source, targets in sorted(_graph().items()) for target in sorted(targets)
             if _layer(target) != _layer(source) and _layer(target) not in ALLOWED[_layer(source)]]
    assert not wrong, "imports against the layer order: " + "; ".join(wrong)


def test_the_layer_table_is_a_strict_order():
    """ALLOWED itself has no circle: layer A may import B only when B may not import A (directly or not)."""
    reach = {layer: set(allowed) for layer, allowed in ALLOWED.items()}
    for _ in ALLOWED:
        for layer in reach:
            reach[layer] |= set().union(*(reach[b] for b in reach[layer]))
    assert all(layer not in reach[layer] for layer in reach)


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
    assert _layer("landmarks.train.finish") == "train" and "train" not in ALLOWED["evaluate"]


def test_no_test_imports_another_test_module_or_conftest():
    tests = Path(__file__).parent
    test_modules = {p.stem for p in tests.rglob("test_*.py")} | {"conftest"}
    offenders = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(tests)} imports {n}" for n in names if n.split(".")[-1] in test_modules]
    assert not offenders, offenders
