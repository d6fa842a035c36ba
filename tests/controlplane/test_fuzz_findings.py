"""Regression tests for what the schemathesis run (test_fuzz_openapi.py)
found: each a request a client could send, and the Status it must get."""

from __future__ import annotations

import json
import socket

import pytest

from pilotfish.api.errors import BadRequest
from pilotfish.client import Client
from pilotfish.controlplane.main import ControlPlane

from .cp_testkit import VS_PATH, Caller, virtual_service


def test_a_list_refuses_a_timeout_that_is_no_integer(call: Caller) -> None:
    for query in ("timeoutSeconds=abc", "timeoutSeconds=", "timeoutSeconds=1.5"):
        answer = call("GET", f"{VS_PATH}?{query}")
        assert answer.status == 400, query
        assert answer.json()["message"].startswith("timeoutSeconds: Invalid value"), query
    assert call("GET", f"{VS_PATH}?timeoutSeconds=5").status == 200


def test_an_empty_dry_run_is_refused_and_stores_nothing(call: Caller) -> None:
    answer = call("POST", f"{VS_PATH}?dryRun=", virtual_service())
    assert answer.status == 400
    assert answer.json()["message"] == 'dryRun: Unsupported value: "": supported values: "All"'
    assert call("GET", f"{VS_PATH}/reviews").status == 404


def test_a_field_manager_is_printable_and_at_most_128_characters(call: Caller) -> None:
    for manager in ("a%1Bb", "line%0Abreak", "m" * 129):
        for answer in (
            call.apply(virtual_service(), f"{VS_PATH}/reviews", f"fieldManager={manager}"),
            call("POST", f"{VS_PATH}?fieldManager={manager}", virtual_service()),
        ):
            assert answer.status == 422, manager
            assert answer.json()["message"].startswith("fieldManager: "), manager
    assert call("GET", f"{VS_PATH}/reviews").status == 404
    long_enough = "m" * 128
    assert (
        call.apply(virtual_service(), f"{VS_PATH}/reviews", f"fieldManager={long_enough}").status
        == 201
    )


def _raw(plane: ControlPlane, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((plane.server.host, plane.server.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_what_the_http_layer_refuses_is_a_status_too(plane: ControlPlane) -> None:
    cases = {
        b"TRACE /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n\r\n": (405, "MethodNotAllowed"),
        b"BREW /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n\r\n": (405, "MethodNotAllowed"),
        b"GET /api/v1 HTTP/1.1 extra\r\n\r\n": (400, "BadRequest"),
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n": (414, "RequestURITooLong"),
        b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n": (
            431,
            "RequestHeaderFieldsTooLarge",
        ),
    }
    for request, (code, reason) in cases.items():
        status, headers, body = _raw(plane, request)
        assert status == code, request[:40]
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        answer = json.loads(body)
        assert answer["kind"] == "Status" and answer["status"] == "Failure", answer
        assert (answer["code"], answer["reason"]) == (code, reason), answer
        assert answer["message"], answer


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a/b"),
        ("name", "web\nx"),
        ("namespace", "../etc"),
        ("workload", "Web_1"),
        ("serviceAccount", "x/ns/kube-system/sa/admin"),
        ("address", "10.0.0.1:80"),
        ("address", "host name"),
        ("appAddress", "127.0.0.1\r\n"),
        ("labels", {"app": "a\nb"}),
        ("labels", {"a/b/c": "x"}),
    ],
)
def test_a_registration_with_a_bad_name_or_address_is_refused(
    client: Client, field: str, value: object
) -> None:
    """Registered names end up in paths, SPIFFE IDs and metric labels; the
    address is what proxies connect to. Each is checked as Kubernetes would."""
    body = {"name": "web-0", "address": "10.0.0.1", "ports": {"http": 80}, field: value}
    with pytest.raises(BadRequest) as refused:
        client.register_instance(body)
    assert refused.value.message.startswith(f'instance "{body["name"]}": {field}')
    assert client.instances() == []


def test_a_merge_patch_whose_metadata_is_no_object_is_a_400(call: Caller) -> None:
    call.apply(virtual_service(), f"{VS_PATH}/reviews")
    for path in (f"{VS_PATH}/reviews", f"{VS_PATH}/reviews/status"):
        for meta in (5, "x", True):
            answer = call(
                "PATCH", path, {"metadata": meta}, content_type="application/merge-patch+json"
            )
            assert (answer.status, answer.json()["message"]) == (400, "metadata: must be an object")


def test_a_field_selector_selects_by_name_and_namespace(call: Caller) -> None:
    """An ignored fieldSelector would list everything, so that
    `kubectl delete --field-selector metadata.name=a` would delete it all."""
    for name in ("a", "b"):
        call.apply(virtual_service(name), f"{VS_PATH}/{name}")
    every = "/apis/networking.istio.io/v1/virtualservices"

    def names(query: str, path: str = VS_PATH) -> list[str]:
        answer = call("GET", f"{path}?{query}")
        assert answer.status == 200, answer.body
        return [i["metadata"]["name"] for i in answer.json()["items"]]

    assert names("fieldSelector=metadata.name%3Da") == ["a"]
    assert names("fieldSelector=metadata.name%3D%3Da") == ["a"]
    assert names("fieldSelector=metadata.name!%3Da") == ["b"]
    assert names("fieldSelector=metadata.namespace%3Ddefault,metadata.name%3Db", every) == ["b"]
    assert names("fieldSelector=metadata.namespace%3Dother", every) == []
    refused = {
        "spec.hosts%3Dx": '"spec.hosts" is not a known field selector: only "metadata.name", "metadata.namespace"',
        "metadata.name": "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
    }
    for query, message in refused.items():
        answer = call("GET", f"{VS_PATH}?fieldSelector={query}")
        assert (answer.status, answer.json()["message"]) == (400, message)


def test_a_watch_with_a_field_selector_sees_that_object_only(call: Caller) -> None:
    stream = call("GET", f"{VS_PATH}?watch=true&fieldSelector=metadata.name%3Db").stream
    assert stream is not None
    for name in ("a", "b"):
        call.apply(virtual_service(name), f"{VS_PATH}/{name}")
    lines = [stream.next_line(0.5) for _ in range(4)]
    stream.close()
    events = [json.loads(line) for line in lines if line]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]


def test_a_query_boolean_given_without_a_value_is_true(call: Caller) -> None:
    """Kubernetes' query booleans: `?watch` watches, `?force` forces."""
    stream = call("GET", f"{VS_PATH}?watch&timeoutSeconds=5").stream
    assert stream is not None
    stream.close()
    call.apply(virtual_service(), f"{VS_PATH}/reviews", "fieldManager=alice")
    taken = virtual_service(hosts=["bob"])
    assert call.apply(taken, f"{VS_PATH}/reviews", "fieldManager=bob").status == 409
    assert call.apply(taken, f"{VS_PATH}/reviews", "fieldManager=bob&force").status == 200
    assert call("GET", f"{VS_PATH}?watch=maybe").status == 400


def test_force_is_refused_on_a_merge_patch(call: Caller) -> None:
    call.apply(virtual_service(), f"{VS_PATH}/reviews")
    for query in ("force=true", "force=false", "force=-1"):
        answer = call(
            "PATCH",
            f"{VS_PATH}/reviews?{query}",
            {"spec": {"hosts": ["x"]}},
            content_type="application/merge-patch+json",
        )
        assert answer.status == 422, query
        assert (
            answer.json()["message"] == "force: Forbidden: may not be specified for non-apply patch"
        )
    assert call("GET", f"{VS_PATH}/reviews").json()["spec"]["hosts"] == ["reviews"]


def test_yaml_keys_that_are_not_strings_become_strings_as_in_kubernetes(call: Caller) -> None:
    """`data: {1: a}` was a 500 (validation took len() of the int key)."""
    body = b"metadata: {name: keys}\ndata: {1: a, true: b, null: c, 2.5: d}\n"
    path = "/api/v1/namespaces/default/configmaps/keys"
    answer = call(
        "PATCH", f"{path}?fieldManager=a", body, content_type="application/apply-patch+yaml"
    )
    assert answer.status == 201, answer.body
    assert answer.json()["data"] == {"1": "a", "true": "b", "null": "c", "2.5": "d"}
