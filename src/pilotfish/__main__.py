from pilotfish.cli import run

raise SystemExit(run())
