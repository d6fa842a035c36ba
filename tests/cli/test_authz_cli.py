"""`pilotfish authz check WORKLOAD` and `describe authorizationpolicy` against
a running control plane: what applies to a workload, as istioctl shows it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
import yaml
from tests.e2e.processes import ControlPlane
from tests.ports import free_port

pytestmark = pytest.mark.slow

DOCS = [
    {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "productpage-v1", "namespace": "default"},
        "spec": {
            "labels": {"app": "productpage", "version": "v1"},
            "command": ["true"],
            "ports": [{"name": "http", "port": 9080}],
        },
    },
    {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "details-v1", "namespace": "default"},
        "spec": {"labels": {"app": "details"}, "command": ["true"]},
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-nothing", "namespace": "default"},
        "spec": {},
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "productpage-viewer", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "productpage"}},
            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
        },
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "mesh-deny-debug",
            "namespace": "istio-system",
            "annotations": {"istio.io/dry-run": "true"},
        },
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
    },
]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("authz-cli")
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        env.pop(var, None)
    running = ControlPlane(tmp / "data", free_port(), env)
    running.start()
    ok(running.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(DOCS)))
    yield running
    if running.process and running.process.poll() is None:
        running.stop()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_authz_check_lists_the_policies_of_a_workload(plane: ControlPlane) -> None:
    rows = [line.split() for line in ok(plane.cli("authz", "check", "productpage-v1")).splitlines()]
    assert rows == [
        ["ACTION", "AuthorizationPolicy", "RULES"],
        ["DENY", "(dry-run)", "mesh-deny-debug.istio-system", "1"],
        ["ALLOW", "allow-nothing.default", "0"],
        ["ALLOW", "productpage-viewer.default", "1"],
    ]
    details = ok(plane.cli("authz", "check", "details-v1"))
    assert "productpage-viewer" not in details and "allow-nothing.default" in details


def test_authz_check_yaml_shows_the_filters_in_order(plane: ControlPlane) -> None:
    out = ok(plane.cli("authz", "check", "productpage-v1", "-o", "yaml"))
    filters = yaml.safe_load(out[out.index("- name:") :])
    assert [f["name"] for f in filters] == ["envoy.filters.http.rbac", "envoy.filters.http.rbac"]
    deny, allow = (f["typedConfig"] for f in filters)
    assert list(deny["shadowRules"]["policies"]) == [
        "ns[istio-system]-policy[mesh-deny-debug]-rule[0]"
    ]
    assert sorted(allow["rules"]["policies"]) == [
        "ns[default]-policy[allow-nothing]-rule[0]",
        "ns[default]-policy[productpage-viewer]-rule[0]",
    ]


def test_authz_check_of_a_missing_workload_fails(plane: ControlPlane) -> None:
    done = plane.cli("authz", "check", "nope")
    assert done.returncode == 1 and "nope" in done.stderr and "not found" in done.stderr


def test_describe_lists_the_workloads_a_policy_selects(plane: ControlPlane) -> None:
    described = ok(plane.cli("describe", "authorizationpolicy", "productpage-viewer"))
    assert "Selected Workloads:  default/productpage-v1\n" in described
    everyone = ok(plane.cli("describe", "authorizationpolicy", "allow-nothing"))
    assert "Selected Workloads:  default/details-v1, default/productpage-v1\n" in everyone
    mesh = ok(plane.cli("describe", "authorizationpolicy", "mesh-deny-debug", "-n", "istio-system"))
    assert "Selected Workloads:  default/details-v1, default/productpage-v1\n" in mesh
