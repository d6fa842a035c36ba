"""Which data-path modules mypyc compiles, and what this install runs.

setup.py reads MODULES from this file (so it imports only the standard
library, and is never compiled itself). A build writes RECORD beside it: the
hash of every source the compiled modules were built from (the modules and
the pilotfish modules they import). An editable install keeps its `.so`
files beside the `.py` files and Python imports the `.so` first, so an
edited source would silently run its old compiled self: `stale()` finds
that, and `python -m pilotfish.proxy.compiled --check` (scripts/test, the
test suite's conftest) refuses to go on.

Rules for code in these modules (mypyc's, checked when the package builds):
no monkeypatching of their functions or attributes (pass a seam as an
argument instead), no subclass of their classes outside the compiled set,
no attribute set on an instance that its class does not declare, and no
class-level defaults on dataclass fields that are meant as ClassVars. One
more, which no build checks: a bytes or bytearray slice whose start can
pass its end must be guarded (mypyc 2.4.1 raises SystemError, "Negative
size passed to PyBytes_FromStringAndSize", where Python gives b"");
`x[i:]`, `x[:j]` and str slices are safe.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from pathlib import Path

MODULES: Final = (
    "pilotfish.proxy.protocol.http1",
    "pilotfish.proxy.protocol.express",
    "pilotfish.proxy.routing.actions",
    "pilotfish.proxy.routing.compile",
    "pilotfish.proxy.routing.headers",
    "pilotfish.proxy.routing.match",
    "pilotfish.proxy.routing.per_filter",
    "pilotfish.proxy.routing.policies",
    "pilotfish.proxy.routing.regex",
    "pilotfish.proxy.routing.request",
    "pilotfish.proxy.routing.supported",
    "pilotfish.proxy.routing.table",
    "pilotfish.proxy.upstream.balancers",
    "pilotfish.proxy.upstream.breakers",
    "pilotfish.proxy.upstream.cluster",
    "pilotfish.proxy.upstream.cluster_set",
    "pilotfish.proxy.upstream.hashing",
    "pilotfish.proxy.upstream.hashring",
    "pilotfish.proxy.upstream.host",
    "pilotfish.proxy.upstream.outlier",
    "pilotfish.proxy.upstream.priority",
    "pilotfish.proxy.upstream.retry",
    "pilotfish.proxy.upstream.spec",
    "pilotfish.proxy.filters.chain",
    "pilotfish.proxy.filters.cors",
    "pilotfish.proxy.filters.fault",
    "pilotfish.proxy.filters.overrides",
    "pilotfish.proxy.filters.percent",
    "pilotfish.proxy.filters.ratelimit",
    "pilotfish.proxy.config",
    "pilotfish.proxy.listeners",
    "pilotfish.proxy.exchange_core",
    "pilotfish.proxy.exchange",
    "pilotfish.proxy.exchange_commands",
    "pilotfish.proxy.server",
    "pilotfish.proxy.upstream.pool",
    "pilotfish.proxy.forwarding",
    "pilotfish.proxy.proto_fields",
    "pilotfish.proxy.response_flags",
    "pilotfish.proxy.stats",
    "pilotfish.proxy.telemetry",
)
RECORD: Final = "mypyc-build.json"


def package_root() -> Path:
    """The package root: src/pilotfish in a checkout, site-packages/pilotfish
    installed. pathlib is imported here, not at the top: a sidecar asked
    /server_info imports this file (running()), and pathlib with urllib.parse
    and ipaddress would stay in it (0.5 MiB)."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def running() -> list[str]:
    """The MODULES this process runs compiled, as the import system finds
    them (each spec's origin; nothing read, no pathlib): /server_info's answer."""
    from importlib.util import find_spec

    return [m for m in MODULES if _extension(find_spec(m))]


def _extension(spec: ModuleSpec | None) -> bool:
    return spec is not None and (spec.origin or "").endswith(tuple(EXTENSION_SUFFIXES))


def source(module: str, root: Path) -> Path:
    """The .py file of a pilotfish module (or its package's __init__.py)."""
    parts = module.split(".")[1:]
    path = root.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def compiled_files(module: str, root: Path) -> list[Path]:
    """The extension modules that shadow `module`'s source, if any."""
    py = source(module, root)
    return [so for suffix in EXTENSION_SUFFIXES if (so := py.with_suffix(suffix)).exists()]


def compiled_modules(root: Path | None = None) -> list[str]:
    root = root or package_root()
    return [m for m in MODULES if compiled_files(m, root)]


def describe(root: Path | None = None) -> str:
    """What `pilotfish --version` says of the data path."""
    root = root or package_root()
    count = len(compiled_modules(root))
    return f"mypyc ({count}/{len(MODULES)} modules)" if count else "interpreted"


def _imports(module: str, root: Path) -> set[str]:
    """The pilotfish modules `module` imports (those that exist as files)."""
    import ast  # the build checks' alone (as hashlib, json): /server_info imports this file

    tree = ast.parse(source(module, root).read_bytes())
    found: set[str] = set()
    package = module if source(module, root).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(part for part in (base, node.module) if part)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("pilotfish.") and source(m, root).exists()}


def build_inputs(root: Path) -> list[str]:
    """The compiled modules and every pilotfish module they import,
    transitively: mypyc compiled against their types."""
    seen: set[str] = set()
    todo = list(MODULES)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module, root))
    return sorted(seen)


def hashes(root: Path) -> dict[str, str]:
    import hashlib  # _hashlib walks OpenSSL's digests: 0.5 MiB in a sidecar

    return {m: hashlib.sha256(source(m, root).read_bytes()).hexdigest() for m in build_inputs(root)}


def write_record(package_dir: Path, root: Path, built: dict[str, str] | None = None) -> None:
    """Called by setup.py once the compiled modules are built into
    `package_dir` (the checkout's for an editable install). `built`: the
    hashes taken before mypyc read the sources, so a source edited while the
    build ran is recorded as it was read, and found stale, not as it is now."""
    import json

    text = json.dumps(hashes(root) if built is None else built, indent=1, sort_keys=True)
    (package_dir / "proxy" / RECORD).write_text(text + "\n")


def stale(root: Path | None = None) -> list[str]:
    """The sources edited since the compiled modules were built from them
    (all of them when there is no record); empty when nothing is compiled."""
    import json

    root = root or package_root()
    if not compiled_modules(root):
        return []
    record = root / "proxy" / RECORD
    built: dict[str, str] = json.loads(record.read_text()) if record.exists() else {}
    now = hashes(root)
    return sorted(m for m in now.keys() | built.keys() if now.get(m) != built.get(m))


def main(argv: list[str]) -> int:
    if argv != ["--check"]:
        print(describe())
        return 0
    changed = stale()
    if not changed:
        return 0
    print(
        "pilotfish: the compiled data path is older than its sources; these changed "
        f"since the build: {', '.join(changed)}.\nRebuild with `scripts/setup --test` "
        "(scripts/test does it), or install uncompiled with PILOTFISH_COMPILE=0.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
