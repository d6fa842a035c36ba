"""Suite-wide hooks: no stale compiled data path; the Istio conformance count
printed after every run."""

from __future__ import annotations

from typing import Any

_CONFORMANCE = "tests/api/test_conformance.py::"
_ANALYZERS = "tests/analysis/test_analyzer_conformance.py::"
_results: dict[str, dict[str, bool]] = {"validation": {}, "bookinfo": {}, "analyzers": {}}


def pytest_configure(config: Any) -> None:
    """Refuse to test a compiled module older than its edited source (an
    editable install keeps the .so beside the .py, and Python imports the .so)."""
    import pytest

    from pilotfish.proxy import compiled

    changed = compiled.stale()
    if changed:
        pytest.exit(
            f"the compiled data path is older than its sources ({', '.join(changed)}): "
            "rebuild with scripts/setup --test, or run scripts/test, which does",
            returncode=4,
        )


def pytest_runtest_logreport(report: Any) -> None:
    if report.when not in ("setup", "call"):
        return
    if report.nodeid.startswith(_ANALYZERS):
        test = report.nodeid[len(_ANALYZERS) :]
        group = "analyzers" if test.startswith("test_istio_analyzer_case[") else None
    elif report.nodeid.startswith(_CONFORMANCE):
        test = report.nodeid[len(_CONFORMANCE) :]
        group = "validation" if test.startswith("test_istio_validation_case[") else None
        group = "bookinfo" if test.startswith("test_bookinfo_file_accepted[") else group
    else:
        return
    if group is None:
        return
    if report.when == "setup" and report.passed:
        return  # the call phase decides
    _results[group][test] = report.passed and report.when == "call"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    analyzers = _results["analyzers"]
    if analyzers:
        from tests.analysis.test_analyzer_conformance import UNCLAIMED

        terminalreporter.write_line(
            f"istioctl analyze conformance: {sum(analyzers.values())}/{len(analyzers)} "
            f"claimed cases passed; not claimed:"
        )
        for cases, reason in UNCLAIMED.items():
            terminalreporter.write_line(f"  {cases}: {reason}")
    validation, bookinfo = _results["validation"], _results["bookinfo"]
    if not validation and not bookinfo:
        return
    files = {t.split(":")[0] for t in bookinfo}
    accepted = {t.split(":")[0] for t in bookinfo} - {
        t.split(":")[0] for t, ok in bookinfo.items() if not ok
    }
    terminalreporter.write_line(
        f"Istio conformance: {sum(validation.values())}/{len(validation)} validation cases passed, "
        f"{len(accepted)}/{len(files)} Bookinfo files accepted"
    )
