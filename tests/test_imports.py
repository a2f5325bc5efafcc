"""The packages import in layers: no import cycle, deferred imports included, and no
import that points up the layer order."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The ground: the transport interface and the helpers every layer may use. ``hubfsm``
#: itself is here because importing any ``hubfsm.x`` runs it; its facade names load
#: their modules on first use, which no layer below does.
GROUND = frozenset(
    {
        "hubfsm",
        "hubfsm.transport",
        "hubfsm.errors",
        "hubfsm.masking",
        "hubfsm.env",
        "hubfsm.logs",
        "hubfsm.digest",
        "hubfsm.version",
    }
)

#: The layers from the bottom up, by package; a module imports only from lower layers
#: or its own. ``transports`` sits above the core (which imports no I/O layer) and
#: itself imports only the ground (checked on its own below).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"hubfsm.core"}),
    frozenset({"transports"}),
    frozenset({"hubfsm.durable"}),
    frozenset({"hubfsm.runtime"}),
    frozenset({"hubfsm.sim", "hubfsm.integrations", "hubfsm.hub"}),
    frozenset({"hubfsm.cli", "hubfsm.__main__"}),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("hubfsm", "transports"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree``, function bodies included, except ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            stack.extend(node.orelse)
            continue
        found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports, at module level or deferred inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            edges.update(submodules)
            if base in modules and len(submodules) < len(node.names):
                edges.add(base)
    edges.discard(name)
    return edges


# Parsed once per run: four tests read the same graph of the source tree.
@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def _package(name: str) -> str:
    return (
        name
        if name in GROUND
        else ".".join(name.split(".")[: 1 if name.startswith("transports") else 2])
    )


def _rank(name: str) -> int:
    """-1 for the ground, else the index of the module's layer in :data:`LAYERS`."""
    if name in GROUND:
        return -1
    package = _package(name)
    for rank, layer in enumerate(LAYERS):
        if package in layer:
            return rank
    raise AssertionError(f"{name} is in no layer: add its package to LAYERS or GROUND")


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Each import of a module from a higher layer, or from another package of the same
    layer unless :data:`SIBLING_USES` allows it."""
    found = []
    for name, imported in graph.items():
        for target in imported:
            mine, theirs = _rank(name), _rank(target)
            if theirs > mine or (
                theirs == mine >= 0
                and _package(name) != _package(target)
                and (_package(name), _package(target)) not in SIBLING_USES
            ):
                found.append((name, target))
    return sorted(found)


#: The imports allowed between two packages of one layer: the simulator's worlds run
#: the local hub; ``python -m hubfsm`` runs the command.
SIBLING_USES = frozenset({("hubfsm.sim", "hubfsm.hub"), ("hubfsm.__main__", "hubfsm.cli")})


def test_no_import_cycle_deferred_imports_included():
    assert _cycles(_graph()) == []


def test_the_checker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_sees_a_deferred_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from hubfsm.sim import world\n", encoding="utf-8")
    assert _imports("hubfsm.sim.refusing", path, _modules()) == {"hubfsm.sim.world"}


def test_every_import_points_down_the_layers():
    assert _upward(_graph()) == []


def test_the_checker_sees_an_import_up_the_layers():
    graph = {"hubfsm.core.engine": {"hubfsm.runtime.session"}, "hubfsm.runtime.session": set()}
    assert _upward(graph) == [("hubfsm.core.engine", "hubfsm.runtime.session")]


def test_the_core_imports_no_io_layer():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith("hubfsm.core"):
            assert all(t in GROUND or t.startswith("hubfsm.core") for t in imported), name


def test_transports_import_only_the_interface_and_the_ground():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith("transports"):
            outside = {t for t in imported if not t.startswith("transports")}
            assert outside <= GROUND - {"hubfsm"}, (name, sorted(outside - GROUND))


# -- one path per name: every import names the module that defines it ----------------

#: Names a module passes on for users: the package facade (``import hubfsm``).
FACADES: dict[str, frozenset[str] | None] = {
    "hubfsm": None,  # every name
}


def _names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names a module defines at its top level, and those it imports there."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return defined, imported - defined


def _passed_on(files: list[Path], modules: dict[str, Path]) -> list[str]:
    """``file:line module.name`` for each import of a name its module only passes on."""
    tables = {
        name: _names(ast.parse(path.read_text(encoding="utf-8"))) for name, path in modules.items()
    }
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.module not in tables:
                continue
            allowed = FACADES.get(node.module, frozenset())
            for alias in node.names:
                passed = alias.name in tables[node.module][1]
                if passed and allowed is not None and alias.name not in allowed:
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    found.append(f"{where}:{node.lineno} {node.module}.{alias.name}")
    return found


def test_every_import_names_the_module_that_defines_the_name():
    places = ("hubfsm", "transports", "tests", "bench", "tools")
    files = [path for place in places for path in (ROOT / place).rglob("*.py")]
    assert _passed_on(files, _modules()) == []


def test_the_checker_sees_a_name_taken_through_another_module(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from hubfsm.core.engine import Core, CoreConfig\n", encoding="utf-8")
    found = _passed_on([path], _modules())
    assert [line.split(" ")[1] for line in found] == ["hubfsm.core.engine.CoreConfig"]
