"""The package is laid out like the pipeline: no import cycle, each part uses only the parts below it, and
no import of neftlib hides inside a function (where it would dodge a cycle instead of removing it)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neftlib"

# From the bottom up: a module may import modules of its own part and of the parts before it, never after.
# noise.py is the method and stands alone; __main__ (the command line) may use everything.
LAYERS = ("neftlib.base", "neftlib.data", "neftlib.training", "neftlib.evaluation", "neftlib.analysis",
          "neftlib.pipeline")

# Imports of neftlib inside a function, allowed with the reason.
LAZY_NEFTLIB = {
    "neftlib.__main__": "the command line loads only the chosen command's modules: `winrate` and `analyze` answer "
                        "without importing torch and transformers",
}

# Third-party packages imported inside functions, allowed with the reason; anything else goes at the top.
LAZY_PACKAGES = {
    "transformers": "seconds to import; modules that only read results, and the command line's help, skip it",
    "peft": "LoRA / QLoRA only",
    "bitsandbytes": "QLoRA only (4-bit layers)",
    "accelerate": "only under a launcher or while training; seconds to import",
    "lm_eval": "optional extra (OpenLLM tasks), a clear install hint when missing",
    "alpaca_eval": "optional, paid GPT-4 judging, a clear install hint when missing",
    "datasets": "hub data only, when a named set has no local copy",
    "httpx": "hub data only, to tell an offline machine from a missing data set",
    "huggingface_hub": "hub data, model cards and push_to_hub only: offline runs and readers of results skip it",
    "papermill": "only the runner executes notebooks",
    "rouge_score": "only when answers are scored",
    "sacrebleu": "only when answers are scored",
    "psutil": "only for the free-memory check before training",
    "torch": "base.io describes the device in env.json without making every reader of results import torch",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, module: str) -> list[str]:
    """The neftlib modules (or packages) an import statement names, resolved to module names where they exist."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        raise AssertionError(f"{module}:{node.lineno}: relative import; neftlib imports by absolute name")
    base = node.module or ""
    # `from neftlib.pipeline import stages` imports the module neftlib.pipeline.stages
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def in_functions(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function body."""
    inner = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inner


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(module -> neftlib modules it imports anywhere, lazy neftlib imports, lazy third-party imports)."""
    graph, lazy_ours, lazy_theirs = {}, [], []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = in_functions(tree)
        graph[name] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for target in imported(node, name):
                if target == "neftlib" or target.startswith("neftlib."):
                    graph[name].add(target)
                    if id(node) in inner:
                        lazy_ours.append((name, target, node.lineno))
                elif id(node) in inner:
                    lazy_theirs.append((name, target.split(".")[0], node.lineno))
    return graph, lazy_ours, lazy_theirs


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer(module: str) -> int | None:
    return next((i for i, part in enumerate(LAYERS) if module == part or module.startswith(part + ".")), None)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_neftlib_modules():
    graph, _, _ = import_graph()
    assert len(graph) > 30, "the package's modules were not found"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_neftlib_import_inside_a_function():
    _, lazy, _ = import_graph()
    hidden = [f"{m}:{line} imports {t}" for m, t, line in lazy if m not in LAZY_NEFTLIB]
    assert not hidden, "move these imports to the top of their module (a cycle is removed, not dodged): " + \
        "; ".join(hidden)


def test_lazy_third_party_imports_have_a_reason():
    _, _, lazy = import_graph()
    stdlib = set(sys.stdlib_module_names)
    unexplained = sorted({f"{m}:{line} imports {pkg}" for m, pkg, line in lazy
                          if pkg not in LAZY_PACKAGES and pkg not in stdlib})
    assert not unexplained, "import these at the top, or add the package and why to LAZY_PACKAGES: " + \
        "; ".join(unexplained)


def test_each_part_uses_only_the_parts_below_it():
    graph, _, _ = import_graph()
    upward = []
    for module, targets in graph.items():
        mine = layer(module)
        for target in targets:
            theirs = layer(target)
            if module == "neftlib.noise" and target != "neftlib.noise":
                upward.append(f"{module} -> {target} (the method uses nothing of ours)")
            elif mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up the pipeline: " + "; ".join(sorted(upward))


@pytest.mark.parametrize("part", LAYERS)
def test_every_part_is_a_package(part):
    assert part in MODULES, f"{part} has no __init__.py"
