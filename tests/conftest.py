"""Suite-wide hooks: the Istio conformance count printed after every run."""

from __future__ import annotations

from typing import Any

_CONFORMANCE = "tests/api/test_conformance.py::"
_AUTHZ = "tests/translate/test_authz_builder.py::test_istio_authz_builder_case["
_results: dict[str, dict[str, bool]] = {"validation": {}, "bookinfo": {}, "authz": {}}


def pytest_runtest_logreport(report: Any) -> None:
    if report.nodeid.startswith(_AUTHZ) and report.when in ("setup", "call"):
        if not (report.when == "setup" and report.passed):
            _results["authz"][report.nodeid] = report.passed and report.when == "call"
        return
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
    validation, bookinfo, authz = _results["validation"], _results["bookinfo"], _results["authz"]
    if authz:
        terminalreporter.write_line(
            f"Istio conformance: {sum(authz.values())}/{len(authz)} AuthorizationPolicy "
            "builder cases passed"
        )
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
