"""The package's layering: imports point down only, and no module imports itself in a circle.

The layers, lowest first (README "Architecture"): core (config, errors, labels, resources,
textfiles, hashing, runtime/) <- models, describe <- concepts; data <- describe's records; train and eval
each build on core, data, models and concepts; train also on eval (its periodic held-out evaluation and
`lss plot`'s figure use evaluation's code), and eval never on train; the applications (demo,
predict) above them; the CLI on top. Every import counts here, also ones inside functions and
under TYPE_CHECKING, because an upward edge is a design problem even when it is lazy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS: dict[str, tuple[str, ...]] = {  # layer -> module prefixes it holds
    "core": ("lss_cli", "lss_cli.errors", "lss_cli.hashing", "lss_cli.resources", "lss_cli.config", "lss_cli.labels",
             "lss_cli.textfiles", "lss_cli.runtime"),
    "models": ("lss_cli.models",),
    "describe": ("lss_cli.describe",),
    "concepts": ("lss_cli.concepts",),
    "data": ("lss_cli.data",),
    "train": ("lss_cli.train",),
    "eval": ("lss_cli.eval",),
    "app": ("lss_cli.demo", "lss_cli.predict", "lss_cli.share", "lss_cli.api"),
    "cli": ("lss_cli.cli", "lss_cli.__main__"),
}
# What each layer may import besides itself. `describe` uses only the core (its CLIP token count is
# its own torch-free BPE, so `lss describe` never imports torch); `data` uses describe's record format to write the
# synthetic set's descriptions. `train` uses `eval` for its periodic zero-shot evaluation (the same
# scoring as `lss eval`) and matplotlib through eval.results; `eval` never uses `train`.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "models": {"core"},
    "describe": {"core"},
    "concepts": {"core", "models", "describe"},
    "data": {"core", "describe"},
    "train": {"core", "models", "describe", "concepts", "data", "eval"},
    "eval": {"core", "models", "describe", "concepts", "data"},
    "app": {"core", "models", "describe", "concepts", "data", "train", "eval"},
    "cli": {"core", "models", "describe", "concepts", "data", "train", "eval", "app"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    # `from pkg import name` may name a submodule: count both, the graph keeps only modules that exist.
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, imports executed at runtime) between the modules of `package` under `root`.

    Runtime imports leave out `if TYPE_CHECKING:` blocks, which never run; both include imports
    inside functions."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    every: dict[str, set[str]] = {m: set() for m in files}
    runtime: dict[str, set[str]] = {m: set() for m in files}

    def visit(node: ast.AST, module: str, is_package: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), module, is_package, True)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _imported(child, module, is_package):
                    if target in files and target != module:
                        every[module].add(target)
                        if not typing_only:
                            runtime[module].add(target)
            visit(child, module, is_package, typing_only)

    for module, path in files.items():
        visit(ast.parse(path.read_text()), module, path.name == "__init__.py", False)
    return every, runtime


def _holds(prefix: str, module: str) -> bool:
    # The root package holds only itself (`lss_cli.__version__`), not every module below it.
    return module == prefix or (prefix != "lss_cli" and module.startswith(prefix + "."))


def layer_of(module: str) -> str:
    best = max((p for prefixes in LAYERS.values() for p in prefixes if _holds(p, module)), key=len, default=None)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py (and the README)")
    return next(layer for layer, prefixes in LAYERS.items() if best in prefixes)


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = layer_of(module), layer_of(target)
            if dst != src and dst not in MAY_IMPORT[src]:
                bad.append(f"{module} ({src}) imports {target} ({dst})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    path: list[str] = []

    def dfs(m: str) -> list[str] | None:
        colour[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if colour[t] == 1:
                return path[path.index(t):] + [t]
            if colour[t] == 0 and (found := dfs(t)):
                return found
        path.pop()
        colour[m] = 2
        return None

    for m in sorted(graph):
        if colour[m] == 0 and (found := dfs(m)):
            return found
    return None


def test_every_module_is_in_a_layer():
    every, _ = import_graph(ROOT, "lss_cli")
    for module in every:
        layer_of(module)


def test_no_import_points_up_a_layer():
    every, _ = import_graph(ROOT, "lss_cli")
    assert upward_edges(every) == []


def test_no_import_cycle():
    _, runtime = import_graph(ROOT, "lss_cli")
    assert find_cycle(runtime) is None


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    # The checks themselves, on a planted package: a cycle through a function-local import, and
    # eval importing train (only under TYPE_CHECKING: still an upward edge, but no runtime cycle).
    pkg = tmp_path / "lss_cli"
    for sub in ("data", "eval", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from lss_cli.data import b\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from lss_cli.data.a import x\n")
    (pkg / "eval" / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from lss_cli.train.t import T\n")
    (pkg / "train" / "t.py").write_text("from lss_cli.eval import e\n")
    every, runtime = import_graph(tmp_path, "lss_cli")
    assert find_cycle(runtime) == ["lss_cli.data.a", "lss_cli.data.b", "lss_cli.data.a"]
    assert upward_edges(every) == ["lss_cli.eval.e (eval) imports lss_cli.train.t (train)"]
    assert "lss_cli.train.t" not in runtime["lss_cli.eval.e"]
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("lss_cli.stray")
