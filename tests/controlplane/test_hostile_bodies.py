"""Issue 14: bodies and parameters that crashed or exhausted the REST API.

Every one gets a 4xx Status naming the problem, quickly, and changes nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pilotfish.controlplane.api import Request
from pilotfish.controlplane.bodies import MAX_DEPTH, MAX_VALUES
from pilotfish.controlplane.main import ControlPlane

from .cp_testkit import TOKEN, VS_PATH, Caller, virtual_service

EF_PATH = "/apis/networking.istio.io/v1alpha3/namespaces/default/envoyfilters"

BILLION_LAUGHS = b"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
spec: {hosts: [*h]}
"""


def nested(depth: int) -> Any:
    """`depth` mappings, one inside the other."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def envoy_filter(depth: int) -> dict[str, Any]:
    """An EnvoyFilter nesting `depth` containers in all: its patch value is free-form."""
    around = 5  # the object, spec, configPatches, the patch entry, patch
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "deep"},
        "spec": {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "patch": {"operation": "MERGE", "value": nested(depth - around)},
                }
            ]
        },
    }


def test_a_billion_laughs_is_refused_quickly_naming_the_limit(call: Caller) -> None:
    assert len(BILLION_LAUGHS) < 600
    started = time.monotonic()
    answer = call.apply(BILLION_LAUGHS, f"{VS_PATH}/reviews")  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
    assert answer.status == 400 and answer.json()["reason"] == "BadRequest"
    message = answer.json()["message"]
    assert "document contains excessive aliasing" in message and str(MAX_VALUES) in message
    assert call("GET", VS_PATH).json()["items"] == []


def test_an_alias_inside_its_own_anchor_is_refused(call: Caller) -> None:
    answer = call.apply(b"spec: &a {x: *a}\n", f"{VS_PATH}/reviews")  # type: ignore[arg-type]
    assert answer.status == 400 and "contains itself" in answer.json()["message"]


def test_json_over_the_parsed_size_is_refused(call: Caller) -> None:
    body = b'{"metadata": {"name": "reviews"}, "spec": {"hosts": [' + b"0," * MAX_VALUES + b"0]}}"
    answer = call("POST", VS_PATH, body)
    assert answer.status == 400 and str(MAX_VALUES) in answer.json()["message"]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 985, 5000])
@pytest.mark.parametrize("as_yaml", [False, True], ids=["json", "yaml"])
def test_nesting_deeper_than_the_limit_is_400_naming_it(
    call: Caller, depth: int, as_yaml: bool
) -> None:
    # Built as text: json.dumps itself cannot nest 985 deep. JSON is YAML too.
    shallow = json.dumps(envoy_filter(6)).encode()
    body = shallow.replace(b"{}", b'{"n":' * (depth - 6) + b"{}" + b"}" * (depth - 6), 1)
    answer = call.apply(body, f"{EF_PATH}/deep") if as_yaml else call("POST", EF_PATH, body)  # type: ignore[arg-type]
    assert answer.status == 400, answer.body[:300]
    expected = f"{'yaml' if as_yaml else 'json'}: exceeded max depth of {MAX_DEPTH}"
    assert expected in answer.json()["message"]


def test_block_style_yaml_deeper_than_the_limit_is_refused(call: Caller) -> None:
    lines = ["metadata: {name: reviews}", "spec:"]
    lines += [f"{'  ' * (i + 1)}n{i}:" for i in range(MAX_DEPTH + 5)]
    answer = call.apply("\n".join(lines).encode(), f"{VS_PATH}/reviews")  # type: ignore[arg-type]
    assert answer.status == 400 and f"max depth of {MAX_DEPTH}" in answer.json()["message"]


def test_an_alias_cannot_carry_nesting_past_the_limit(call: Caller) -> None:
    half = "[" * 60 + "]" * 60
    body = f"x: &d {half}\nspec: {'[' * 50}*d{']' * 50}\n".encode()
    answer = call.apply(body, f"{VS_PATH}/reviews")  # type: ignore[arg-type]
    assert answer.status == 400 and f"max depth of {MAX_DEPTH}" in answer.json()["message"]


def test_the_deepest_accepted_object_is_stored_and_served(call: Caller) -> None:
    created = call("POST", EF_PATH, envoy_filter(MAX_DEPTH))
    assert created.status == 201, created.body[:300]
    answer = call("GET", f"{EF_PATH}/deep")
    assert answer.status == 200
    assert answer.json()["spec"] == envoy_filter(MAX_DEPTH)["spec"]
    applied = call.apply(envoy_filter(MAX_DEPTH), f"{EF_PATH}/deep", "fieldManager=other")
    assert applied.status == 200, applied.body[:300]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"preconditions": 5}, "DeleteOptions.preconditions of type v1.Preconditions"),
        ({"preconditions": "x"}, "DeleteOptions.preconditions of type v1.Preconditions"),
        ({"preconditions": {"resourceVersion": 5}}, "DeleteOptions.preconditions.resourceVersion"),
        ({"preconditions": {"uid": []}}, "DeleteOptions.preconditions.uid"),
        ({"gracePeriodSeconds": "30"}, "DeleteOptions.gracePeriodSeconds of type int64"),
        ({"orphanDependents": "yes"}, "DeleteOptions.orphanDependents of type bool"),
        ({"propagationPolicy": 1}, "DeleteOptions.propagationPolicy"),
        ({"dryRun": "All"}, "DeleteOptions.dryRun of type []string"),
        ({"dryRun": [1]}, "DeleteOptions.dryRun of type string"),
    ],
)
def test_wrongly_typed_delete_options_are_400_naming_the_field(
    call: Caller, options: dict[str, Any], field: str
) -> None:
    assert call("POST", VS_PATH, virtual_service()).status == 201
    answer = call("DELETE", f"{VS_PATH}/reviews", options)
    assert answer.status == 400 and answer.json()["reason"] == "BadRequest"
    assert "json: cannot unmarshal" in answer.json()["message"]
    assert field in answer.json()["message"]
    assert call("GET", f"{VS_PATH}/reviews").status == 200  # not deleted


def test_delete_options_of_the_right_types_still_work(call: Caller) -> None:
    created = call("POST", VS_PATH, virtual_service()).json()
    version = created["metadata"]["resourceVersion"]
    dry = call("DELETE", f"{VS_PATH}/reviews", {"dryRun": ["All"], "gracePeriodSeconds": 0})
    assert dry.status == 200 and call("GET", f"{VS_PATH}/reviews").status == 200
    unknown = call("DELETE", f"{VS_PATH}/reviews", {"dryRun": ["Some"]})
    assert unknown.status == 400 and 'Unsupported value: "Some"' in unknown.json()["message"]
    done = call("DELETE", f"{VS_PATH}/reviews", {"preconditions": {"resourceVersion": version}})
    assert done.status == 200 and call("GET", f"{VS_PATH}/reviews").status == 404


@pytest.mark.parametrize("version", ["abc", "5", "0"])
def test_a_create_with_a_resource_version_is_refused(call: Caller, version: str) -> None:
    answer = call("POST", VS_PATH, virtual_service(resourceVersion=version))
    assert answer.status == 400
    assert answer.json()["message"] == "resourceVersion should not be set on objects to be created"
    assert call("GET", VS_PATH).json()["items"] == []


def test_a_watch_from_a_future_revision_is_504_too_large_resource_version(call: Caller) -> None:
    call("POST", VS_PATH, virtual_service())
    current = int(call("GET", VS_PATH).json()["metadata"]["resourceVersion"])
    answer = call("GET", f"{VS_PATH}?watch=true&resourceVersion={current + 100}")
    assert answer.status == 504 and answer.stream is None
    assert answer.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"Timeout: Too large resource version: {current + 100}, current: {current}",
        "reason": "Timeout",
        "details": {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    }
    now = call("GET", f"{VS_PATH}?watch=true&resourceVersion={current}")
    assert now.status == 200 and now.stream is not None
    now.stream.close()


def test_no_bad_request_is_a_500(call: Caller) -> None:
    bad: list[tuple[str, str, bytes]] = [
        ("DELETE", f"{VS_PATH}/reviews", b'{"preconditions": 5}'),
        ("DELETE", f"{VS_PATH}/reviews", b"[1]"),
        ("POST", VS_PATH, b'{"metadata": 5}'),
        ("POST", VS_PATH, b'{"metadata": {"resourceVersion": {"a": 1}}}'),
        ("POST", VS_PATH, b"\xff\xfe"),
        ("POST", VS_PATH, b"[" * 100_000),
        ("GET", f"{VS_PATH}?watch=true&resourceVersion=abc", b""),
        ("GET", f"{VS_PATH}?watch=maybe", b""),
        ("GET", f"{VS_PATH}?watch=true&timeoutSeconds={'9' * 400}", b""),
        ("GET", f"{VS_PATH}?watch=true&resourceVersion={'9' * 400}", b""),
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    for method, path, body in bad:
        answer = call.api.handle(Request.of(method, path, headers, body))
        assert 400 <= answer.status < 500, (method, path, body[:40], answer.body)
        assert answer.json()["kind"] == "Status" and answer.json()["message"]


def test_the_mesh_and_load_tester_paths_parse_within_the_same_limits(
    plane: ControlPlane,
) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    token = (plane.data_dir / "token").read_text().strip()
    for path in ("/loadtester/gate/check", "/api/v1/registry/instances"):
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        answer = plane.server.api.handle(Request.of("POST", path, headers, deep))
        assert answer.status == 400, (path, answer.body)
        assert f"exceeded max depth of {MAX_DEPTH}" in answer.body.decode()
