"""The REST API, request by request, without sockets."""

from __future__ import annotations

import json
from pathlib import Path

from pilotfish.analysis import warnings_for as analyze
from pilotfish.api.validation import validate_or_raise
from pilotfish.controlplane.api import Api, EventStream
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

from .cp_testkit import TOKEN, VS_PATH, Caller, service, virtual_service

SVC_PATH = "/api/v1/namespaces/default/services"


def events(stream: EventStream | None, count: int) -> list[dict]:
    assert stream is not None
    out = []
    while len(out) < count:
        line = stream.next_line(2.0)
        assert line is not None, f"only {len(out)} of {count} events arrived"
        out.append(json.loads(line))
    return out


def test_apply_then_get_and_list_in_the_version_of_the_path(call: Caller) -> None:
    applied = call.apply(virtual_service(labels={"app": "reviews"}), f"{VS_PATH}/reviews")
    assert applied.status == 201, applied.body
    assert applied.json()["metadata"]["resourceVersion"] == "1"

    got = call(
        "GET", "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices/reviews"
    )
    assert got.status == 200
    assert got.json()["apiVersion"] == "networking.istio.io/v1beta1"
    assert got.json()["spec"]["hosts"] == ["reviews"]

    listed = call("GET", f"{VS_PATH}?labelSelector=app%3Dreviews", token=None).json()
    assert listed["kind"] == "VirtualServiceList"
    assert listed["apiVersion"] == "networking.istio.io/v1"
    assert listed["metadata"]["resourceVersion"] == "1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["reviews"]
    assert call("GET", f"{VS_PATH}?labelSelector=app%3Dother").json()["items"] == []


def test_list_across_namespaces_and_a_cluster_scoped_kind(call: Caller) -> None:
    call.apply(service("a", namespace="one"), "/api/v1/namespaces/one/services/a")
    call.apply(service("b", namespace="two"), "/api/v1/namespaces/two/services/b")
    every = call("GET", "/api/v1/services").json()
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in every["items"]] == [
        ("one", "a"),
        ("two", "b"),
    ]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "one"}}
    assert call.apply(namespace, "/api/v1/namespaces/one").status == 201
    assert call("GET", "/api/v1/namespaces/one").json()["kind"] == "Namespace"
    assert [n["metadata"]["name"] for n in call("GET", "/api/v1/namespaces").json()["items"]] == [
        "one"
    ]


def test_a_second_manager_conflicts_on_the_field_until_it_forces(call: Caller) -> None:
    call.apply(virtual_service(), f"{VS_PATH}/reviews", "fieldManager=alice")
    bob = virtual_service(hosts=["reviews", "reviews.example.com"])
    conflict = call.apply(bob, f"{VS_PATH}/reviews", "fieldManager=bob")
    assert conflict.status == 409
    status = conflict.json()
    assert status["kind"] == "Status" and status["reason"] == "Conflict" and status["code"] == 409
    assert 'conflict with "alice"' in status["message"] and ".spec.hosts" in status["message"]

    forced = call.apply(bob, f"{VS_PATH}/reviews", "fieldManager=bob&force=true")
    assert forced.status == 200
    assert call("GET", f"{VS_PATH}/reviews").json()["spec"]["hosts"] == [
        "reviews",
        "reviews.example.com",
    ]


def test_dry_run_stores_nothing(call: Caller) -> None:
    dry = call.apply(virtual_service(), f"{VS_PATH}/reviews", "fieldManager=a&dryRun=All")
    assert dry.status == 201 and dry.json()["spec"]["hosts"] == ["reviews"]
    assert call("GET", f"{VS_PATH}/reviews").status == 404
    assert call("POST", f"{VS_PATH}?dryRun=All", virtual_service()).status == 201
    assert call("GET", VS_PATH).json()["items"] == []
    assert (
        call.apply(virtual_service(), f"{VS_PATH}/reviews", "fieldManager=a&dryRun=Some").status
        == 400
    )


def test_an_invalid_object_is_422_with_its_field_and_is_not_stored(call: Caller) -> None:
    bad = virtual_service("broken")
    bad["spec"]["http"][0]["route"][0]["weight"] = -5
    response = call.apply(bad, f"{VS_PATH}/broken")
    assert response.status == 422
    assert response.json()["reason"] == "Invalid"
    assert (
        "VirtualService default/broken: spec.http[0].route[0].weight" in response.json()["message"]
    )
    assert call("GET", f"{VS_PATH}/broken").status == 404


def test_path_and_body_must_agree(call: Caller) -> None:
    cases = {
        f"{VS_PATH}/other": "the name of the object (reviews) does not match the name on the URL (other)",
        "/apis/networking.istio.io/v1/namespaces/prod/virtualservices/reviews": "does not match the namespace sent on the request (prod)",
        "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices/reviews": "the API version in the data (networking.istio.io/v1) does not match",
        "/apis/networking.istio.io/v1/namespaces/default/gateways/reviews": "the kind in the data (VirtualService)",
    }
    body = virtual_service(namespace="default")
    for path, message in cases.items():
        response = call.apply(body, path)
        assert response.status == 400, path
        assert response.json()["reason"] == "BadRequest"
        assert message in response.json()["message"]
    assert call("GET", VS_PATH).json()["items"] == []


def test_a_body_without_identity_takes_it_from_the_path(call: Caller) -> None:
    response = call.apply({"spec": virtual_service()["spec"]}, f"{VS_PATH}/reviews")
    assert response.status == 201, response.body
    assert response.json()["metadata"]["name"] == "reviews"
    assert response.json()["kind"] == "VirtualService"


def test_unknown_paths_are_404_statuses(call: Caller) -> None:
    for path in (
        "/apis/networking.istio.io/v1/namespaces/default/widgets",
        "/apis/nope.example.com/v1/things",
        "/api/v1/virtualservices",
        "/apis/networking.istio.io/v1/virtualservices/reviews",  # namespaced: needs a namespace
        "/api/v1/namespaces/default/namespaces",  # cluster-scoped under a namespace
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices/r/scale",
        "/nothing",
    ):
        response = call("GET", path)
        assert response.status == 404, path
        assert response.json()["kind"] == "Status" and response.json()["reason"] == "NotFound"
    assert (
        'virtualservices.networking.istio.io "nope" not found'
        in call("GET", f"{VS_PATH}/nope").json()["message"]
    )


def test_writes_need_the_token_and_remote_reads_do_too(call: Caller) -> None:
    # As apiserver with anonymous auth on: no token on loopback is system:anonymous,
    # who may not write (403); a token that is not valid is 401.
    wrong = call.apply(virtual_service(), f"{VS_PATH}/reviews", token="wrong")
    assert wrong.status == 401 and wrong.json()["reason"] == "Unauthorized"
    anonymous = call.apply(virtual_service(), f"{VS_PATH}/reviews", token=None)
    assert anonymous.status == 403 and anonymous.json()["reason"] == "Forbidden"
    assert call("DELETE", f"{VS_PATH}/reviews", token=None).status == 403
    assert call("GET", VS_PATH).json()["items"] == []

    assert call("GET", VS_PATH, token=None, peer="127.0.0.1").status == 200
    assert call("GET", VS_PATH, token=None, peer="::1").status == 200
    assert call("GET", VS_PATH, token=None, peer="10.1.2.3").status == 401
    assert call("GET", "/openapi/v3", token=None, peer="10.1.2.3").status == 401
    assert call("GET", VS_PATH, token=TOKEN, peer="10.1.2.3").status == 200
    assert call("GET", "/readyz", token=None, peer="10.1.2.3").status == 200


def test_apply_needs_a_field_manager_and_a_known_patch_type(call: Caller) -> None:
    no_manager = call(
        "PATCH",
        f"{VS_PATH}/reviews",
        virtual_service(),
        content_type="application/apply-patch+yaml",
    )
    assert no_manager.status == 400 and "require fieldManager" in no_manager.json()["message"]
    wrong = call("PATCH", f"{VS_PATH}/reviews", [], content_type="application/json-patch+json")
    assert wrong.status == 415 and wrong.json()["reason"] == "UnsupportedMediaType"


def test_apply_takes_yaml(call: Caller) -> None:
    body = b"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, annotations: {at: 2024-05-01T12:00:00Z}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""
    response = call(
        "PATCH",
        f"{VS_PATH}/reviews?fieldManager=a",
        body,
        content_type="application/apply-patch+yaml",
    )
    assert response.status == 201, response.body
    assert response.json()["metadata"]["annotations"] == {"at": "2024-05-01T12:00:00Z"}
    broken = call(
        "PATCH",
        f"{VS_PATH}/reviews?fieldManager=a",
        b"a: [",
        content_type="application/apply-patch+yaml",
    )
    assert broken.status == 400 and "not valid YAML" in broken.json()["message"]


def test_create_update_merge_patch_and_status(call: Caller) -> None:
    created = call("POST", VS_PATH, virtual_service())
    assert created.status == 201
    assert call("POST", VS_PATH, virtual_service()).json()["reason"] == "AlreadyExists"
    version = created.json()["metadata"]["resourceVersion"]

    changed = virtual_service(hosts=["reviews", "r2"], resourceVersion=version)
    assert call("PUT", f"{VS_PATH}/reviews", changed).status == 200
    stale = call("PUT", f"{VS_PATH}/reviews", changed)
    assert stale.status == 409 and "has been modified" in stale.json()["message"]

    patch = {"metadata": {"labels": {"tier": "web"}}, "spec": {"hosts": ["r3"]}}
    merged = call("PATCH", f"{VS_PATH}/reviews", patch, content_type="application/merge-patch+json")
    assert merged.status == 200, merged.body
    assert merged.json()["spec"]["hosts"] == ["r3"] and merged.json()["metadata"]["labels"] == {
        "tier": "web"
    }
    assert merged.json()["spec"]["http"] == virtual_service()["spec"]["http"]

    status = {**merged.json(), "status": {"observedGeneration": 3}, "spec": {"hosts": ["ignored"]}}
    written = call("PUT", f"{VS_PATH}/reviews/status", status)
    assert written.status == 200, written.body
    live = call("GET", f"{VS_PATH}/reviews/status").json()
    assert live["status"] == {"observedGeneration": 3} and live["spec"]["hosts"] == ["r3"]


def test_delete_returns_the_object_and_dry_run_keeps_it(call: Caller) -> None:
    call.apply(virtual_service(), f"{VS_PATH}/reviews")
    dry = call("DELETE", f"{VS_PATH}/reviews?dryRun=All")
    assert dry.status == 200 and dry.json()["metadata"]["name"] == "reviews"
    assert call("GET", f"{VS_PATH}/reviews").status == 200
    stale = call("DELETE", f"{VS_PATH}/reviews", {"preconditions": {"resourceVersion": "99"}})
    assert stale.status == 409
    assert call("DELETE", f"{VS_PATH}/reviews").status == 200
    assert call("GET", f"{VS_PATH}/reviews").status == 404
    assert call("DELETE", f"{VS_PATH}/reviews").status == 404


def test_a_delete_whose_uid_precondition_is_another_object_is_refused(call: Caller) -> None:
    """The object was deleted and made again under the same name: a delete
    meant for the old one must not remove the new one (Kubernetes' 409)."""
    old = call.apply(virtual_service(), f"{VS_PATH}/reviews").json()["metadata"]["uid"]
    assert call("DELETE", f"{VS_PATH}/reviews").status == 200
    new = call.apply(virtual_service(), f"{VS_PATH}/reviews").json()["metadata"]["uid"]
    refused = call("DELETE", f"{VS_PATH}/reviews", {"preconditions": {"uid": old}})
    assert refused.status == 409 and refused.json()["reason"] == "Conflict"
    assert refused.json()["message"] == (
        'Operation cannot be fulfilled on virtualservices.networking.istio.io "reviews": '
        f"Precondition failed: UID in precondition: {old}, UID in object meta: {new}"
    )
    assert call("GET", f"{VS_PATH}/reviews").json()["metadata"]["uid"] == new
    done = call("DELETE", f"{VS_PATH}/reviews", {"preconditions": {"uid": new}})
    assert done.status == 200 and call("GET", f"{VS_PATH}/reviews").status == 404


def test_a_delete_held_by_a_finalizer_marks_until_a_patch_removes_it(call: Caller) -> None:
    vs = virtual_service()
    vs["metadata"]["finalizers"] = ["example.com/hold"]
    call.apply(vs, f"{VS_PATH}/reviews")
    marked = call("DELETE", f"{VS_PATH}/reviews")
    assert marked.status == 200 and "deletionTimestamp" in marked.json()["metadata"]
    assert call("GET", f"{VS_PATH}/reviews").json()["metadata"]["finalizers"] == [
        "example.com/hold"
    ]
    patch = {"metadata": {"finalizers": None}}
    released = call(
        "PATCH", f"{VS_PATH}/reviews", patch, content_type="application/merge-patch+json"
    )
    assert released.status == 200, released.body
    assert call("GET", f"{VS_PATH}/reviews").status == 404


def test_verbs_a_path_does_not_take_are_405(call: Caller) -> None:
    assert call("POST", f"{VS_PATH}/reviews", virtual_service()).status == 405
    assert call("DELETE", VS_PATH).status == 405
    assert (
        call("POST", "/apis/networking.istio.io/v1/virtualservices", virtual_service()).status
        == 405
    )
    assert call("POST", "/apis", {}).status == 405


def test_analysis_warnings_come_back_as_warning_headers(call: Caller) -> None:
    vs = virtual_service()
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v9"
    response = call.apply(vs, f"{VS_PATH}/reviews")
    assert response.status == 201
    assert response.warnings and all(w.startswith('299 - "') for w in response.warnings)
    assert any("v9" in w for w in response.warnings)
    assert any('host not found: \\"reviews\\"' in w for w in response.warnings)

    call.apply(service(), f"{SVC_PATH}/reviews")
    again = call.apply(vs, f"{VS_PATH}/reviews")
    assert not any("host not found" in w for w in again.warnings)


def test_watch_streams_added_modified_deleted_and_resumes(call: Caller) -> None:
    call.apply(virtual_service("a"), f"{VS_PATH}/a")
    stream = call("GET", f"{VS_PATH}?watch=true").stream
    [added] = events(stream, 1)
    assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == "a"
    call.apply(virtual_service("a", hosts=["a2"]), f"{VS_PATH}/a")
    call.apply(service("ignored"), f"{SVC_PATH}/ignored")
    call("DELETE", f"{VS_PATH}/a")
    modified, deleted = events(stream, 2)
    assert (modified["type"], modified["object"]["spec"]["hosts"]) == ("MODIFIED", ["a2"])
    assert deleted["type"] == "DELETED"
    assert stream is not None
    stream.close()

    since = added["object"]["metadata"]["resourceVersion"]
    resumed = call("GET", f"{VS_PATH}?watch=1&resourceVersion={since}").stream
    assert [e["type"] for e in events(resumed, 2)] == ["MODIFIED", "DELETED"]
    assert resumed is not None and resumed.next_line(0.1) is None
    resumed.close()


def test_watch_in_another_version_and_with_a_timeout(call: Caller) -> None:
    call.apply(virtual_service("a"), f"{VS_PATH}/a")
    stream = call(
        "GET", "/apis/networking.istio.io/v1alpha3/virtualservices?watch=true&timeoutSeconds=0"
    ).stream
    assert stream is not None
    assert stream.next_line(0.1) is None and stream.done


def test_an_expired_resource_version_is_an_error_event(tmp_path: Path) -> None:
    store = ResourceStore(SqliteBackend(tmp_path / "s.db", history=2), validate=validate_or_raise)
    call = Caller(Api(store, TOKEN, analyze=analyze))
    for hosts in (["a"], ["b"], ["c"], ["d"]):
        call.apply(virtual_service(hosts=hosts), f"{VS_PATH}/reviews")
    stream = call("GET", f"{VS_PATH}?watch=true&resourceVersion=1").stream
    [error] = events(stream, 1)
    assert error["type"] == "ERROR"
    assert error["object"]["kind"] == "Status" and error["object"]["code"] == 410
    assert error["object"]["reason"] == "Expired"
    assert stream is not None and stream.next_line(0.1) is None and stream.done
    store.close()


def test_discovery_names_groups_versions_and_resources(call: Caller) -> None:
    assert call("GET", "/api").json()["versions"] == ["v1"]
    groups = {g["name"]: g for g in call("GET", "/apis").json()["groups"]}
    assert groups["networking.istio.io"]["preferredVersion"]["version"] == "v1"
    assert "flagger.app" in groups
    resources = call("GET", "/apis/networking.istio.io/v1").json()
    assert resources["kind"] == "APIResourceList"
    names = {r["name"]: r for r in resources["resources"]}
    assert names["virtualservices"]["namespaced"] is True
    assert "watch" in names["virtualservices"]["verbs"] and "virtualservices/status" in names
    core = {r["name"] for r in call("GET", "/api/v1").json()["resources"]}
    assert {"services", "namespaces", "configmaps", "secrets"} <= core
    assert call("GET", "/apis/networking.istio.io").json()["kind"] == "APIGroup"
    assert call("GET", "/version").json()["gitVersion"].startswith("v")
    assert call("GET", "/healthz").body == b"ok"


def test_reads_carry_no_warnings_and_status_has_no_dry_run(call: Caller) -> None:
    vs = virtual_service()
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v9"
    assert call.apply(vs, f"{VS_PATH}/reviews").warnings
    assert call("GET", f"{VS_PATH}/reviews").warnings == []
    live = call("GET", f"{VS_PATH}/reviews").json()
    dry = call("PUT", f"{VS_PATH}/reviews/status?dryRun=All", {**live, "status": {"x": 1}})
    assert dry.status == 400
    assert "status" not in call("GET", f"{VS_PATH}/reviews").json()
    # a status write is no change analysis reads: no warnings (the agent reports often)
    put = call("PUT", f"{VS_PATH}/reviews/status", {**live, "status": {"x": 1}})
    assert put.status == 200 and put.warnings == []
