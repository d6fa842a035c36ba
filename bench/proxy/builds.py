"""The two builds of the data path, side by side in one run: the installed
package (compiled by mypyc when installed so) and an interpreted copy of it.

The copy is the installed package's sources without its extension modules,
put first on PYTHONPATH: Python then imports every pilotfish module from
the `.py` files, exactly as an install with PILOTFISH_COMPILE=0 would.
A process started either way tells which it runs (`pilotfish --version`,
the admin's /server_info), and the harness checks that it runs the one it
was meant to, rather than report one build's numbers under the other's name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from procs import get

COMPILED = "mypyc"  # /server_info's data_path.compiled for each build
INTERPRETED = "interpreted"


def installed_package() -> Path:
    """The directory of the `pilotfish` package this Python imports (not imported here)."""
    spec = importlib.util.find_spec("pilotfish")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the pilotfish package is not installed in this Python")
    return Path(next(iter(spec.submodule_search_locations)))


def _compiled_files(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(tuple(EXTENSION_SUFFIXES))}


def interpreted_tree(directory: Path, package: Path | None = None) -> Path:
    """Copies the package into `directory`/interpreted without its compiled
    modules (once); returns the directory to put on PYTHONPATH."""
    root = directory / INTERPRETED
    if not (root / "pilotfish").is_dir():
        shutil.copytree(package or installed_package(), root / "pilotfish", ignore=_compiled_files)
    return root


def interpreted_env(root: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with `root` first on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def build_mismatch(admin_port: int, expected: str) -> str | None:
    """None if the sidecar behind `admin_port` runs the `expected` build
    (COMPILED or INTERPRETED), else what it runs instead."""
    answer = get(admin_port, "/server_info")
    if answer.status != 200:
        return f"/server_info answered {answer.status}"
    running = json.loads(answer.body)["data_path"]["compiled"]
    if running == expected:
        return None
    if expected == COMPILED:
        return (
            f"the data path is {running}, not compiled (install it compiled: "
            "scripts/setup; or measure pilotfish-interpreted)"
        )
    return f"the data path is {running}, not {expected}"
