"""Schemathesis against the control plane's own OpenAPI document (issue 14,
"keep finding them").

A real control plane on an ephemeral port is seeded with real objects of
several kinds (examples/bookinfo, examples/canary, Istio's Bookinfo
networking files in a second namespace, a Secret), and the document it
serves at /openapi/v3 is narrowed only where the fuzzer needs help to get
past 404s: every `{name}` and `{namespace}` may also be one of the seeded
ones, and the seeded objects are the explicit examples of their kind's
bodies. Writes carry the admin token. Checks: no 5xx, status codes and
bodies as the document says, and every 4xx is a Kubernetes Status.

The default run covers the seeded kinds at their storage version with a few
examples each (about two minutes on a laptop). `PILOTFISH_FUZZ_EXAMPLES=N`
raises the examples per operation; `PILOTFISH_FUZZ_ALL=1` covers every kind
at every version (419 operations): both are for a long run by hand, see
docs/security.md.
"""

from __future__ import annotations

import copy
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, Response
from schemathesis.config import SchemathesisConfig
from tests.api.test_conformance import conformance_dir

from pilotfish.api.kinds import registry
from pilotfish.api.manifest_yaml import load_all
from pilotfish.client import Client
from pilotfish.controlplane.main import ControlPlane
from pilotfish.controlplane.openapi import openapi

REPO = Path(__file__).resolve().parents[2]
SEEDS = [
    *sorted((REPO / "examples/bookinfo").glob("*.yaml")),
    REPO / "examples/canary/10-reviews.yaml",
    REPO / "examples/canary/20-canary.yaml",
]
BOOKINFO_NETWORKING = "istio/bookinfo-networking"
SECOND_NAMESPACE = "bookinfo"
EXAMPLES = int(os.environ.get("PILOTFISH_FUZZ_EXAMPLES", "8"))
EVERY_OPERATION = os.environ.get("PILOTFISH_FUZZ_ALL", "") not in ("", "0")
COVERAGE = os.environ.get("PILOTFISH_FUZZ_COVERAGE", "") not in ("", "0")
PATHS = os.environ.get("PILOTFISH_FUZZ_PATHS", "")  # a regex: fuzz only these paths
# The default run: the kinds that have seeded objects, at their storage version.
DEFAULT_KINDS = (
    "services", "configmaps", "secrets", "namespaces", "virtualservices",
    "destinationrules", "gateways", "serviceentries", "workloads", "canaries",
)  # fmt: skip


@dataclass
class Seeds:
    """The seeded objects' names, by plural and namespace, and one whole
    object per plural for the body examples."""

    names: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    example: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, obj: dict[str, Any]) -> None:
        kind, _ = registry().for_object(obj)
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default") if kind.namespaced else ""
        names = self.names.setdefault(kind.plural, {}).setdefault(namespace, [])
        if meta["name"] not in names:
            names.append(meta["name"])
        self.example.setdefault(kind.plural, obj)


def seed_objects() -> list[dict[str, Any]]:
    found = []
    for path in SEEDS:
        found += [d for d in load_all(path.read_text(encoding="utf-8")) if d]
    networking = conformance_dir() / BOOKINFO_NETWORKING
    for path in sorted(networking.glob("*.yaml")):
        for doc in load_all(path.read_text(encoding="utf-8")):
            if doc:
                doc["metadata"]["namespace"] = SECOND_NAMESPACE
                found.append(doc)
    found.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SECOND_NAMESPACE}})
    found.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "reviews-db", "namespace": "default"},
            "stringData": {"password": "hunter2"},
        }
    )
    return found


@dataclass
class Plane:
    url: str
    token: str


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """A control plane holding the seeds, serving the document this module fuzzes."""
    root = tmp_path_factory.mktemp("fuzz")
    plane = ControlPlane.open(root / "data", "127.0.0.1:0", root / "config.yaml")
    plane.server.start()
    try:
        token = (plane.data_dir / "token").read_text().strip()
        client = Client(plane.server.url, token, timeout=10)
        for obj in seed_objects():
            client.apply(obj, manager="seed", force=True)
        with urllib.request.urlopen(f"{plane.server.url}/openapi/v3", timeout=10) as answer:
            assert json.load(answer) == DOCUMENT
        yield Plane(plane.server.url, token)
    finally:
        plane.close()


def with_seeds(document: dict[str, Any], seeds: Seeds) -> dict[str, Any]:
    """The document with each `{name}`/`{namespace}` also allowing the seeded
    ones (an `anyOf` keeps every other string too), and each body's example
    a seeded object of its kind."""
    narrowed = copy.deepcopy(document)
    namespaces = sorted({ns for by_ns in seeds.names.values() for ns in by_ns if ns})
    for path, item in narrowed["paths"].items():
        plural = _plural(path)
        names = sorted({n for ns in seeds.names.get(plural, {}).values() for n in ns})
        for parameter in item.get("parameters", []):
            values = {"name": names, "namespace": namespaces}.get(parameter["name"])
            if values:
                parameter["schema"] = {"anyOf": [{"enum": values}, {"type": "string"}]}
                parameter["example"] = values[0]
        example = seeds.example.get(plural)
        for operation in (v for k, v in item.items() if k != "parameters"):
            if example is not None and "requestBody" in operation:
                for media in operation["requestBody"]["content"].values():
                    media["example"] = _example_for(example, path)
    return narrowed


def _plural(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{") and p != "status"]
    return parts[-1]


def _example_for(obj: dict[str, Any], path: str) -> dict[str, Any]:
    """A seeded object as a client would send it to `path`: in the path's apiVersion."""
    group_version = path.split("/namespaces/")[0].removeprefix("/apis/").removeprefix("/api/")
    return {**obj, "apiVersion": "/".join(group_version.split("/")[:2])}


def _operations_pattern() -> str:
    """The default run's paths: the seeded kinds at their storage version."""
    paths = set()
    for kind in (k for k in registry() if k.plural in DEFAULT_KINDS):
        version = kind.versions[0]
        paths.add(kind.path(version, "{namespace}" if kind.namespaced else None))
        paths.add(kind.path(version, None))
    escaped = "|".join(sorted(p.replace("{", "\\{").replace("}", "\\}") for p in paths))
    return f"^({escaped})(/\\{{name\\}}(/status)?)?$"


def _schema() -> Any:
    seeds = Seeds()
    for obj in seed_objects():
        seeds.add(obj)
    config = SchemathesisConfig.from_dict(
        {
            # Kubernetes ignores query parameters it does not know, and so do we.
            "generation": {"max-examples": EXAMPLES, "allow-extra-parameters": False},
            # Coverage's boundary cases are built for every operation when the tests
            # are collected: gigabytes and minutes on Istio's schemas before the
            # first request. Examples and fuzzing reach the same code.
            "phases": {"coverage": {"enabled": COVERAGE}},
        }
    )
    loaded = schemathesis.openapi.from_dict(with_seeds(DOCUMENT, seeds), config=config)
    if PATHS:
        return loaded.include(path_regex=PATHS)
    return loaded if EVERY_OPERATION else loaded.include(path_regex=_operations_pattern())


DOCUMENT = openapi(registry())

# -- checks --------------------------------------------------------------------------------


@schemathesis.check
def kubernetes_status_on_4xx(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx is a Status naming the problem, with its own code (kubectl
    prints `message`, and clients pick the error by `reason`)."""
    if not 400 <= response.status_code < 500:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        f"{response.status_code} is not JSON: {response.text[:200]!r}"
    )
    status = json.loads(response.content)
    assert status.get("kind") == "Status" and status.get("apiVersion") == "v1", status
    assert status.get("status") == "Failure" and status.get("code") == response.status_code, status
    assert status.get("reason") and status.get("message"), status
    return True


def _is_watch(case: Case) -> bool:
    # Any value may mean a watch once serialized (an empty object is `watch=`).
    return case.method == "GET" and "watch" in (case.query or {})


def _streamed(response: Response) -> bool:
    """A watch: chunked JSON lines (a List has a Content-Length)."""
    encoding = response.headers.get("transfer-encoding", [""])[0]
    return response.status_code == 200 and "chunked" in encoding.lower()


def _check_watch_lines(response: Response) -> None:
    """A watch answers JSON lines of WatchEvents, which the document's
    media-type map cannot describe beside the List of the same content type."""
    for line in response.content.splitlines():
        if line.strip():
            event = json.loads(line)
            assert event["type"] in ("ADDED", "MODIFIED", "DELETED", "ERROR"), event
            assert isinstance(event["object"], dict), event


schema = _schema()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_control_plane_api(case: Case, seeded: Plane) -> None:
    rewritten = _is_watch(case)
    if rewritten:
        # An open watch only ends when asked: end it within a second.
        case.query = {**case.query, "timeoutSeconds": "1"}
    headers = {"Authorization": f"Bearer {seeded.token}"}
    response = case.call(base_url=seeded.url, headers=headers, timeout=10)
    excluded = [
        # The document's schemas are structural (Kubernetes' too): a body that
        # fits them may still name a missing object or break a semantic rule.
        schemathesis.checks.positive_data_acceptance,
        # Anonymous loopback reads are served by design; who may read what is the
        # REST API hardening branch's item (Secrets need a token there).
        schemathesis.checks.ignored_auth,
    ]
    if rewritten or (
        case.method == "GET" and case.operation.schema.is_security_param_negated(case)
    ):
        # The rewritten query may no longer be the negative case generated. And
        # a read without the token is served to loopback callers by design (the
        # REST API hardening branch decides which reads need one).
        excluded.append(schemathesis.checks.negative_data_rejection)
    if _streamed(response):
        _check_watch_lines(response)
        excluded += [schemathesis.checks.response_schema_conformance]
    case.validate_response(response, excluded_checks=excluded, headers=headers)
