"""The `pilotfish` command: kubectl's habits for the mesh's resources."""

from __future__ import annotations

import sys


def run() -> int:
    """The `pilotfish` command and `python -m pilotfish`. A sidecar
    (`pilotfish proxy ...`) is parsed by cli/sidecar.py alone, without
    importing the other commands: what it never uses stays out of its memory."""
    if sys.argv[1:2] == ["proxy"]:
        from pilotfish.cli.sidecar import main as sidecar

        return sidecar(sys.argv[1:])
    from pilotfish.cli.main import main

    return main()
