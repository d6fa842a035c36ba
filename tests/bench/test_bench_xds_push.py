"""bench/xds_push.py end to end at its smallest: a real control plane, real
ADS streams and `pilotfish apply`; the change must reach the proxies that
hold the changed route, and only them. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_change_reaches_the_affected_proxies_only(tmp_path: Path) -> None:
    out = tmp_path / "push.json"
    command = [sys.executable, str(REPO / "bench" / "xds_push.py"), "--services", "6"]
    command += ["--endpoints", "1", "--routed", "2", "--proxies", "4", "--namespaces", "2"]
    command += ["--sidecar", "--changes", "1", "--client-processes", "1"]
    command += ["--idle-seconds", "0.5", "--deadline", "120", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    changes = result["changes"]
    assert [c["via"] for c in changes] == ["cli", "api"]
    for change in changes:
        # The two proxies of svc-0's namespace hold its routes; the others nothing.
        assert change["affected"] == 2 and len(change["from_start"]) == 2
        assert change["unaffected_got"] == 0 and change["affected_extra"] == 0
    assert len(result["load_before"]) == 3 and len(result["load_after"]) == 3
    assert "load average" in done.stdout
