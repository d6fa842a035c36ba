"""The layout's rules, read from the sources: the data plane (proxy/) imports
neither the node agent nor the API's kinds and errors, the client library
does not import the server, and proxy/'s modules import each other without
a cycle (a module imported half-initialized breaks on whichever name its
importer reads first, and only in the order that happens to trigger it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pilotfish

SRC = Path(pilotfish.__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    root = SRC.joinpath(*package.split("."))
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    return {module_name(p): p for p in paths}


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = importer if is_package else importer.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return ".".join(p for p in (base, node.module) if p)


def imported(path: Path, nodes: Iterator[ast.AST] | None = None) -> set[str]:
    """Every module an import statement in `path` names (`from a import b`
    names a and a.b: b may be a module); all statements, or those of `nodes`."""
    name, is_package = module_name(path), path.name == "__init__.py"
    found: set[str] = set()
    for node in nodes if nodes is not None else ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """The statements that run when the module is imported: not function
    bodies, not `if TYPE_CHECKING:` blocks (annotations only)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _run_at_import(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _run_at_import(getattr(node, field, []))


def import_time_edges(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` its import runs, with their
    packages' __init__ (but not its own packages', already being run)."""
    known = modules(package)
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        names = imported(path, _run_at_import(ast.parse(path.read_bytes()).body))
        own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
        targets = {m.rsplit(".", i)[0] for m in names for i in range(m.count(".") + 1)}
        edges[name] = {t for t in targets if t in known and t not in own}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by depth-first search, as the path that closes it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def reachable(start: str, within: str = "pilotfish") -> set[str]:
    """The pilotfish modules `start` imports, transitively (any statement)."""
    everything = modules(within)
    seen: set[str] = set()
    todo = [m for m in everything if m == start or m.startswith(start + ".")]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(m for m in imported(everything[name]) if m in everything)
    return seen


def test_the_data_plane_imports_neither_the_node_agent_nor_the_api() -> None:
    offending = {
        f"{name} imports {target}"
        for name, path in modules("pilotfish.proxy").items()
        for target in imported(path)
        if target.split(".")[:2] in (["pilotfish", "agent"], ["pilotfish", "api"])
    }
    assert not offending, sorted(offending)


def test_the_client_library_does_not_import_the_server() -> None:
    reached = reachable("pilotfish.client")
    assert "pilotfish.client.registration" in reached
    server = sorted(m for m in reached if m.startswith("pilotfish.controlplane"))
    assert not server, server


def test_the_proxy_modules_import_each_other_without_a_cycle() -> None:
    edges = import_time_edges("pilotfish.proxy")
    assert "pilotfish.proxy.upstream.pool" in edges["pilotfish.proxy.server"]
    assert not cycles(edges), cycles(edges)


def test_the_cycle_check_sees_a_cycle_through_a_package() -> None:
    edges = {"p": {"p.a"}, "p.a": {"q"}, "q": {"p"}}
    assert cycles(edges) == [["p", "p.a", "q", "p"]]
    assert cycles({"p": {"p.a"}, "p.a": set()}) == []
