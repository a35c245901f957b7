"""The package's shape: imports run one way down the layers, with no cycle, and every module stays
small enough to read in one sitting.

Every `import hfmini...` and `from hfmini... import` is counted, those inside functions and under
TYPE_CHECKING too: an import that only runs later still ties the two modules together.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hfmini"

# Lowest first. A module may import its own layer's modules and those of the layers below it.
LAYERS = (
    ("foundations", ("hfmini.errors", "hfmini.cache", "hfmini.run_folder")),
    ("config", ("hfmini.config",)),
    ("models", ("hfmini.models",)),
    ("data", ("hfmini.data",)),
    ("outputs", ("hfmini.outputs",)),
    ("training", ("hfmini.training",)),
    ("serving", ("hfmini.serving",)),
    ("commands", ("hfmini.api", "hfmini.cli", "hfmini.shakespeare", "hfmini.bench", "hfmini")),
)
# The one module that composes the data primitives; none of them imports it.
DATA_COMPOSER = "hfmini.data.prepare"
MAX_FLAT_MODULES = 12
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(module imported, line) for every hfmini import in `path`, wherever it stands.

    `from hfmini.x import y` imports module hfmini.x.y when that is a module, else hfmini.x."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if submodule in known else node.module, node.lineno))
    return [(name, line) for name, line in found if name == "hfmini" or name.startswith("hfmini.")]


def import_graph() -> dict[str, list[tuple[str, int]]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) for name, path in found.items()}


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming `module`."""
    best, depth = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def find_cycle(graph: dict[str, list[tuple[str, int]]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target, _ in graph.get(node, []):
            if target == node:
                continue
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target, line in targets:
            if layer_of(target) > layer_of(module):
                problems.append(
                    f"{module} (line {line}) imports {target}: {LAYERS[layer_of(module)][0]} "
                    f"sits below {LAYERS[layer_of(target)][0]}"
                )
            if target == DATA_COMPOSER and module.startswith("hfmini.data."):
                problems.append(f"{module} (line {line}) imports the data composer {target}")
    return problems


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_imports_only_run_down_the_layers():
    problems = upward_imports(import_graph())
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_planted_cycle_and_upward_import():
    """The two checks above, on a graph with a data primitive that imports the trainer."""
    graph = import_graph()
    planted = dict(graph)
    planted["hfmini.data.chunks"] = [*graph["hfmini.data.chunks"], ("hfmini.training.trainer", 1)]
    assert any(
        "hfmini.data.chunks (line 1) imports hfmini.training.trainer" in p
        for p in upward_imports(planted)
    )
    cycle = find_cycle(planted)
    assert cycle is not None and "hfmini.data.chunks" in cycle


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_the_package_stays_small_enough_to_read():
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(flat) <= MAX_FLAT_MODULES, f"{len(flat)} modules flat in hfmini/: {flat}"
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        assert lines <= MAX_MODULE_LINES, f"{name} is {lines} lines (at most {MAX_MODULE_LINES})"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, (
                    f"{name}.{node.name} is {length} lines (at most {MAX_FUNCTION_LINES})"
                )


@pytest.mark.parametrize("module", ["hfmini.errors", "hfmini.cache", "hfmini.run_folder"])
def test_foundations_import_no_other_layer(module):
    targets = {target for target, _ in import_graph()[module]}
    assert all(layer_of(target) == 0 for target in targets), targets
