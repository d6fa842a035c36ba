"""Suite-wide hooks: no stale compiled data path; the conformance counts
printed after every run (Istio's validation cases, Bookinfo files, istioctl
analyze's cases, AuthorizationPolicy builder cases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# (node id prefix, test name prefix) -> the group a test's outcome counts in
_GROUPS = {
    ("tests/api/test_conformance.py::", "test_istio_validation_case["): "validation",
    ("tests/api/test_conformance.py::", "test_bookinfo_file_accepted["): "bookinfo",
    ("tests/analysis/test_analyzer_conformance.py::", "test_istio_analyzer_case["): "analyzers",
    ("tests/translate/test_authz_builder.py::", "test_istio_authz_builder_case["): "authz",
}
_results: dict[str, dict[str, bool]] = {group: {} for group in _GROUPS.values()}


def _group_of(nodeid: str) -> tuple[str, str] | None:
    for (module, prefix), group in _GROUPS.items():
        if nodeid.startswith(module) and nodeid[len(module) :].startswith(prefix):
            return group, nodeid[len(module) :]
    return None


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
    found = _group_of(report.nodeid) if report.when in ("setup", "call") else None
    if found is None:
        return
    if report.when == "setup" and report.passed:
        return  # the call phase decides
    group, test = found
    _results[group][test] = report.passed and report.when == "call"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    analyzers, authz = _results["analyzers"], _results["authz"]
    if analyzers:
        from tests.analysis.test_analyzer_conformance import UNCLAIMED

        terminalreporter.write_line(
            f"istioctl analyze conformance: {sum(analyzers.values())}/{len(analyzers)} "
            f"claimed cases passed; not claimed:"
        )
        for cases, reason in UNCLAIMED.items():
            terminalreporter.write_line(f"  {cases}: {reason}")
    if authz:
        terminalreporter.write_line(
            f"Istio conformance: {sum(authz.values())}/{len(authz)} AuthorizationPolicy "
            "builder cases passed"
        )
    validation, bookinfo = _results["validation"], _results["bookinfo"]
    if not validation and not bookinfo:
        return
    files = {t.split(":")[0] for t in bookinfo}
    accepted = files - {t.split(":")[0] for t, ok in bookinfo.items() if not ok}
    terminalreporter.write_line(
        f"Istio conformance: {sum(validation.values())}/{len(validation)} validation cases passed, "
        f"{len(accepted)}/{len(files)} Bookinfo files accepted"
    )


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Any]:
    """A real etcd of this test's own (tests/etcd_server.py); a test module or
    directory may define its own `etcd` instead (the store suite shares one)."""
    from tests.etcd_server import EtcdServer  # only for the tests that ask for etcd

    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()
