"""The `pilotfish` command: kubectl's habits for the mesh's resources."""

from __future__ import annotations

import sys


def run() -> int:
    """The `pilotfish` command and `python -m pilotfish`. A sidecar
    (`pilotfish proxy ...`) is parsed by cli/sidecar.py alone, without
    importing the other commands: what it never uses stays out of its memory;
    `pilotfish apply` by cli/dispatch.py alone, so that a change is sent
    without waiting for the rest of the command line to load."""
    if sys.argv[1:2] == ["proxy"]:
        from pilotfish.cli.sidecar import main as sidecar

        return sidecar(sys.argv[1:])
    if sys.argv[1:2] == ["apply"]:
        from pilotfish.cli import dispatch

        return dispatch.run(dispatch.apply_parser(), sys.argv[2:])
    from pilotfish.cli.main import main

    return main()
