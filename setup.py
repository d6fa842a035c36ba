"""Compiles the data path with mypyc when pilotfish is installed.

The modules are listed in src/pilotfish/proxy/compiled.py. PILOTFISH_COMPILE=0
installs pure Python (and, in a checkout, removes compiled modules left by an
earlier build, so that none shadows its source).
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
compiled = runpy.run_path(str(SRC / "pilotfish" / "proxy" / "compiled.py"))
MODULES: tuple[str, ...] = compiled["MODULES"]
GROUP = "pilotfish_proxy"  # the shared library: pilotfish_proxy__mypyc.*.so
# The sources as mypyc is about to read them (set by extensions()): the record
# written after the build must not take an edit made while gcc ran for built.
BUILT: dict[str, str] = {}


def remove_compiled() -> None:
    for module in MODULES:
        for so in compiled["compiled_files"](module, SRC / "pilotfish"):
            so.unlink()
    for so in SRC.glob(f"{GROUP}__mypyc.*"):
        so.unlink()
    (SRC / "pilotfish" / "proxy" / compiled["RECORD"]).unlink(missing_ok=True)


class BuildExt(build_ext):
    """Writes the record of the sources compiled beside the built modules."""

    def run(self) -> None:
        if self.inplace:
            remove_compiled()
        super().run()
        package_dir = SRC / "pilotfish" if self.inplace else Path(self.build_lib) / "pilotfish"
        compiled["write_record"](package_dir, SRC / "pilotfish", BUILT or None)


def extensions() -> list[object]:
    if os.environ.get("PILOTFISH_COMPILE", "1") == "0":
        remove_compiled()
        return []
    from mypyc.build import mypycify

    BUILT.update(compiled["hashes"](SRC / "pilotfish"))
    paths = [str(compiled["source"](m, SRC / "pilotfish").relative_to(HERE)) for m in MODULES]
    built = mypycify(paths, opt_level="3", group_name=GROUP)
    for extension in built:
        # Only PyInit_ is the loader's (pyport.h exports it): the modules reach
        # one another through capsules, so the rest is hidden and the dynamic
        # linker binds no symbol of our own at load (docs/benchmarks.md).
        extension.extra_compile_args.append("-fvisibility=hidden")
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
