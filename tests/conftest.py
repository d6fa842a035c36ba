"""Suite-wide hooks: the Istio conformance count printed after every run."""

from __future__ import annotations

from typing import Any

_CONFORMANCE = "tests/api/test_conformance.py::"
_results: dict[str, dict[str, bool]] = {"validation": {}, "bookinfo": {}}


def pytest_runtest_logreport(report: Any) -> None:
    if not report.nodeid.startswith(_CONFORMANCE) or report.when not in ("setup", "call"):
        return
    test = report.nodeid[len(_CONFORMANCE) :]
    group = "validation" if test.startswith("test_istio_validation_case[") else None
    group = "bookinfo" if test.startswith("test_bookinfo_file_accepted[") else group
    if group is None:
        return
    if report.when == "setup" and report.passed:
        return  # the call phase decides
    _results[group][test] = report.passed and report.when == "call"


def pytest_terminal_summary(terminalreporter: Any) -> None:
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
