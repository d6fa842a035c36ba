"""The benchmark's compiled and interpreted rows side by side (bench/proxy/
builds.py, the pilotfish-interpreted targets, the report's ratios for both,
bench/proxy_path.py --interpreted). No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from functools import partial
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from pilotfish.proxy import compiled

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "proxy"))

from builds import (
    COMPILED,
    build_mismatch,
    installed_package,
    interpreted_env,
    interpreted_tree,
)
from load import Latency, Load
from procs import Supervisor, free_port
from report import ShapeResult, TargetResult, ratio_lines, ratios
from shapes import SHAPES
from targets import TARGETS, Bench, HopStart, Target, _chain, _pilotfish_hop, known_target

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_interpreted_copy_has_no_compiled_module_and_says_so(tmp_path: Path) -> None:
    fake = tmp_path / "installed" / "pilotfish"
    (fake / "proxy").mkdir(parents=True)
    (fake / "proxy" / "exchange.py").write_text("")
    (fake / "proxy" / f"exchange{EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")
    (fake / "proxy" / "__pycache__").mkdir()
    root = interpreted_tree(tmp_path, fake)
    copied = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert copied == ["pilotfish", "pilotfish/proxy", "pilotfish/proxy/exchange.py"]

    real = interpreted_tree(tmp_path / "real")
    assert not [p for p in real.rglob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]
    version = subprocess.run(
        [sys.executable, "-m", "pilotfish", "--version"],
        env=interpreted_env(real),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.strip().endswith("data path: interpreted"), version
    assert installed_package() == Path(compiled.__file__).resolve().parent.parent


def test_interpreted_env_puts_the_copy_first() -> None:
    env = interpreted_env(Path("/copy"), {"PYTHONPATH": "/other", "HOME": "/h"})
    assert env == {"PYTHONPATH": "/copy:/other", "HOME": "/h"}
    assert interpreted_env(Path("/copy"), {})["PYTHONPATH"] == "/copy"


def test_the_new_targets_are_known() -> None:
    for name in ("pilotfish-interpreted", "pilotfish-interpreted-chain"):
        assert name in TARGETS
        assert known_target(name)


def test_an_interpreted_hop_runs_interpreted_and_a_compiled_row_refuses_it(
    tmp_path: Path,
) -> None:
    """Real sidecars from the run's interpreted copy: the pilotfish-interpreted
    hop is ready and passes its check (/server_info says interpreted); a
    compiled row that such a build served is marked unavailable, with the
    reason, rather than reported under the compiled name."""
    bench = Bench(Supervisor(tmp_path), pool_size=4, backend_port=free_port())
    try:
        target = _chain(
            bench, Target("pilotfish-interpreted", 1), _pilotfish_hop, "pilotfish-interpreted"
        )
        assert target.unavailable is None, target.unavailable
        assert target.port and bench.interpreted is not None

        def mislabelled(bench: Bench, name: str, upstream: int) -> HopStart:
            hop = _pilotfish_hop(bench, "pilotfish-interpreted-2", upstream)
            return replace(hop, check=partial(build_mismatch, hop.admin, COMPILED))

        refused = _chain(bench, Target("pilotfish", 1), mislabelled, "pilotfish")
        assert refused.unavailable is not None
        assert refused.unavailable.startswith("pilotfish: the data path is interpreted, not")
        assert not refused.measured

        if compiled.describe().startswith(COMPILED):  # the install's own build passes
            ok = _chain(bench, Target("pilotfish", 1), _pilotfish_hop, "pilotfish")
            assert ok.unavailable is None, ok.unavailable
    finally:
        bench.sup.stop_all()


def _result(name: str, hops: int, rps: float, p90: float) -> TargetResult:
    shape = ShapeResult(
        wrk=Load(int(rps * 10), 10.0, 0), latency=Latency(1000, 10000, 0, p90 / 2, p90, p90 * 2)
    )
    return TargetResult(name, hops, shapes={s: shape for s in SHAPES})


def test_the_report_gives_the_issue_ratios_for_both_builds() -> None:
    results = {
        r.name: r
        for r in (
            _result("direct", 0, 20000, 200),
            _result("nginx", 1, 10000, 250),
            _result("pilotfish", 1, 8000, 300),
            _result("pilotfish-interpreted", 1, 5000, 400),
            _result("nginx-chain", 2, 8000, 300),  # adds 100
            _result("pilotfish-chain", 2, 6000, 320),  # adds 120
            _result("pilotfish-interpreted-chain", 2, 4000, 450),  # adds 250
        )
    }
    rat = ratios(results, ("tiny",))
    tiny = rat["tiny"]
    assert tiny["throughput_pilotfish_over_nginx"] == pytest.approx(0.8)
    assert tiny["throughput_pilotfish_interpreted_over_nginx"] == pytest.approx(0.5)
    assert tiny["chain_added_p90_pilotfish_over_nginx"] == pytest.approx(1.2)
    assert tiny["chain_added_p90_pilotfish_interpreted_over_nginx"] == pytest.approx(2.5)
    lines = ratio_lines(rat).splitlines()
    assert lines[0] == (
        "     tiny: pilotfish/nginx throughput = 0.80 (meets >= 0.7); "
        "chain added p90 pilotfish/nginx = 1.20 (meets <= 1.3)"
    )
    assert lines[1] == (
        "         : pilotfish-interpreted/nginx throughput = 0.50 (misses >= 0.7); "
        "chain added p90 pilotfish-interpreted/nginx = 2.50 (misses <= 1.3)"
    )


def test_the_report_leaves_out_an_interpreted_build_not_measured() -> None:
    results = {
        r.name: r for r in (_result("nginx", 1, 10000, 250), _result("pilotfish", 1, 8000, 300))
    }
    lines = ratio_lines(ratios(results, ("tiny",))).splitlines()
    assert lines[0].startswith("     tiny: pilotfish/nginx throughput = 0.80")
    assert not any("interpreted" in line for line in lines)


def test_proxy_path_measures_both_builds_in_one_command() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "proxy_path.py"),
            "--shapes",
            "tiny",
            "--seconds",
            "0.05",
            "--interpreted",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    heads = [line for line in done.stdout.splitlines() if line.startswith("data path:")]
    assert heads == [f"data path: {compiled.describe()}", "data path: interpreted"]
    assert done.stdout.count("\ntiny ") == 2, done.stdout


def test_proxy_path_refuses_a_build_it_was_not_meant_to_run() -> None:
    if compiled.describe() == "interpreted":
        pytest.skip("the installed data path is interpreted: nothing to refuse")
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "proxy_path.py"),
            "--shapes",
            "tiny",
            "--expect",
            "interpreted",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: the data path is {compiled.describe()}, not interpreted"
