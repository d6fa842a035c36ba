"""The compiled data path: what --version says, and the guard that refuses
a compiled module older than its edited source (in a copy of the package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from pilotfish.proxy import compiled

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of src/pilotfish "built" with stats compiled: no real .so,
    only a file where the extension module would be, and the build record."""
    root = tmp_path / "src" / "pilotfish"
    shutil.copytree(
        compiled.package_root(), root, ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    (root / "proxy" / compiled.RECORD).unlink(missing_ok=True)
    (root / "proxy" / f"stats{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    compiled.write_record(root, root)
    return root


def edit(package: Path, module: str) -> None:
    path = compiled.source(module, package)
    path.write_text(path.read_text() + "\n# edited\n")


def test_the_record_matches_until_a_source_changes(package: Path) -> None:
    assert compiled.compiled_modules(package) == ["pilotfish.proxy.stats"]
    assert compiled.describe(package) == f"mypyc (1/{len(compiled.MODULES)} modules)"
    assert compiled.stale(package) == []
    edit(package, "pilotfish.proxy.routing.match")
    assert compiled.stale(package) == ["pilotfish.proxy.routing.match"]


def test_an_imported_interpreted_module_counts_too(package: Path) -> None:
    # The compiled filters were built against filters/base's types.
    assert "pilotfish.proxy.filters.base" not in compiled.MODULES
    edit(package, "pilotfish.proxy.filters.base")
    assert compiled.stale(package) == ["pilotfish.proxy.filters.base"]


def test_no_record_is_stale_and_nothing_compiled_is_never_stale(package: Path) -> None:
    (package / "proxy" / compiled.RECORD).unlink()
    assert compiled.stale(package) == compiled.build_inputs(package)
    (package / "proxy" / f"stats{EXTENSION_SUFFIXES[0]}").unlink()
    assert compiled.stale(package) == []
    assert compiled.describe(package) == "interpreted"


def run(package: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    return subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_and_pytest_refuse_an_edited_source(package: Path) -> None:
    assert run(package, "-m", "pilotfish.proxy.compiled", "--check").returncode == 0
    edit(package, "pilotfish.proxy.protocol.http1")
    check = run(package, "-m", "pilotfish.proxy.compiled", "--check")
    assert check.returncode == 1
    assert "changed since the build: pilotfish.proxy.protocol.http1." in check.stderr
    tests = run(
        package, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/proxy/test_bootstrap.py"
    )
    assert tests.returncode == 4, tests.stdout + tests.stderr
    assert "compiled data path is older than its sources" in tests.stdout + tests.stderr


def test_version_says_how_the_data_path_runs() -> None:
    pilotfish = Path(sys.executable).parent / "pilotfish"
    out = subprocess.run(
        [pilotfish, "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith(f"data path: {compiled.describe()}")


def test_a_source_edited_while_the_build_ran_is_stale(package: Path) -> None:
    # setup.py hashes the sources before mypyc reads them and records those
    # hashes after gcc is done: an edit in between must not pass as built.
    before = compiled.hashes(package)
    edit(package, "pilotfish.proxy.stats")
    compiled.write_record(package, package, before)
    assert compiled.stale(package) == ["pilotfish.proxy.stats"]
