"""Create, get, list, update, delete: the Kubernetes rules a kubectl user relies on."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from store_testkit import configmap, vs

from pilotfish.api.errors import AlreadyExists, BadRequest, Conflict, Invalid, NotFound
from pilotfish.store import Key
from pilotfish.store.resources import ResourceStore

VS_KEY = Key("networking.istio.io", "VirtualService", "default", "reviews")
MODIFIED = (
    'Operation cannot be fulfilled on virtualservices.networking.istio.io "reviews": the object '
    "has been modified; please apply your changes to the latest version and try again"
)


def test_create_sets_system_metadata_and_get_returns_it(store: ResourceStore) -> None:
    created = store.create(vs(), manager="kubectl")
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", meta["uid"]
    )
    assert meta["creationTimestamp"] == "2024-05-01T12:00:00Z"
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert store.get(VS_KEY) == created
    assert created["spec"] == {"hosts": ["reviews"]}


def test_client_cannot_set_system_metadata(store: ResourceStore) -> None:
    obj = vs()
    obj["metadata"].update(
        uid="mine",
        generation=7,
        creationTimestamp="1999-01-01T00:00:00Z",
        managedFields=[{"manager": "x"}],
    )
    created = store.create(obj, manager="kubectl")
    meta = created["metadata"]
    assert meta["uid"] != "mine"
    assert meta["generation"] == 1
    assert meta["creationTimestamp"] == "2024-05-01T12:00:00Z"
    assert [m["manager"] for m in meta["managedFields"]] == ["kubectl"]


def test_create_twice_is_already_exists(store: ResourceStore) -> None:
    store.create(vs(), manager="kubectl")
    with pytest.raises(
        AlreadyExists, match=r'^virtualservices.networking.istio.io "reviews" already exists$'
    ):
        store.create(vs(hosts=["other"]), manager="kubectl")
    assert store.get(VS_KEY)["spec"] == {"hosts": ["reviews"]}


def test_missing_objects_are_not_found_with_kubectls_message(store: ResourceStore) -> None:
    message = r'^virtualservices.networking.istio.io "reviews" not found$'
    with pytest.raises(NotFound, match=message):
        store.get(VS_KEY)
    with pytest.raises(NotFound, match=message):
        store.delete(VS_KEY)
    with pytest.raises(NotFound, match=message):
        store.update(vs(), manager="kubectl")
    with pytest.raises(NotFound, match=message):
        store.update_status(VS_KEY, {"phase": "x"})


def test_namespace_defaults_and_cluster_scoped_kinds_have_none(store: ResourceStore) -> None:
    assert store.key_of(vs()) == VS_KEY
    assert store.key_of(vs(namespace="prod")).namespace == "prod"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "namespace": "x"}}
    assert store.key_of(ns) == Key("", "Namespace", "", "prod")
    created = store.apply(ns, manager="kubectl")
    assert "namespace" not in created["metadata"]


def test_object_without_a_name_is_invalid(store: ResourceStore) -> None:
    with pytest.raises(Invalid, match=r"metadata\.name: Required value"):
        store.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, manager="kubectl")


def test_unknown_kind_is_bad_request(store: ResourceStore) -> None:
    with pytest.raises(BadRequest, match='no kind "Pod" is registered for version "v1"'):
        store.apply(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, manager="kubectl"
        )


def test_generation_counts_spec_changes_only(store: ResourceStore) -> None:
    store.create(vs(), manager="kubectl")
    labelled = vs()
    labelled["metadata"]["labels"] = {"app": "reviews"}
    after_labels = store.update(labelled, manager="kubectl")
    assert after_labels["metadata"]["generation"] == 1
    after_status = store.update_status(VS_KEY, {"phase": "Ready"})
    assert after_status["metadata"]["generation"] == 1
    after_spec = store.update(vs(hosts=["reviews", "ratings"]), manager="kubectl")
    assert after_spec["metadata"]["generation"] == 2
    assert int(after_spec["metadata"]["resourceVersion"]) > int(
        after_status["metadata"]["resourceVersion"]
    )


def test_update_replaces_everything_but_status_and_keeps_identity(
    store: ResourceStore, clock
) -> None:
    created = store.create(vs(gateways=["gw"], hosts=["a"]), manager="kubectl")
    store.update_status(VS_KEY, {"phase": "Ready"})
    clock.advance(60)
    replacement = vs(hosts=["b"])
    replacement["status"] = {"phase": "Hacked"}
    updated = store.update(replacement, manager="kubectl")
    assert updated["spec"] == {"hosts": ["b"]}
    assert updated["status"] == {"phase": "Ready"}
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["creationTimestamp"] == "2024-05-01T12:00:00Z"


def test_update_with_stale_resource_version_conflicts(store: ResourceStore) -> None:
    first = store.create(vs(), manager="kubectl")
    stale = first["metadata"]["resourceVersion"]
    store.update(vs(hosts=["new"]), manager="kubectl")
    attempt = vs(hosts=["lost"])
    attempt["metadata"]["resourceVersion"] = stale
    with pytest.raises(Conflict) as raised:
        store.update(attempt, manager="kubectl")
    assert raised.value.message == MODIFIED
    assert store.get(VS_KEY)["spec"] == {"hosts": ["new"]}
    current = store.get(VS_KEY)
    current["spec"] = {"hosts": ["won"]}
    assert store.update(current, manager="kubectl")["spec"] == {"hosts": ["won"]}


def test_update_status_is_optimistic_too(store: ResourceStore) -> None:
    created = store.create(vs(), manager="kubectl")
    rv = created["metadata"]["resourceVersion"]
    ok = store.update_status(VS_KEY, {"phase": "Ready"}, resource_version=rv, manager="operator")
    assert ok["status"] == {"phase": "Ready"}
    with pytest.raises(Conflict, match="the object has been modified"):
        store.update_status(VS_KEY, {"phase": "Stale"}, resource_version=rv)
    assert store.get(VS_KEY)["status"] == {"phase": "Ready"}
    entries = {(m["manager"], m.get("subresource", "")) for m in ok["metadata"]["managedFields"]}
    assert ("operator", "status") in entries


def test_delete_returns_last_state_and_removes(store: ResourceStore) -> None:
    store.create(vs(), manager="kubectl")
    deleted = store.delete(VS_KEY)
    assert deleted["spec"] == {"hosts": ["reviews"]}
    with pytest.raises(NotFound):
        store.get(VS_KEY)
    recreated = store.create(vs(), manager="kubectl")
    assert recreated["metadata"]["uid"] != deleted["metadata"]["uid"]
    assert int(recreated["metadata"]["resourceVersion"]) > int(
        deleted["metadata"]["resourceVersion"]
    )


def test_delete_with_stale_resource_version_conflicts(store: ResourceStore) -> None:
    rv = store.create(vs(), manager="kubectl")["metadata"]["resourceVersion"]
    store.update(vs(hosts=["x"]), manager="kubectl")
    with pytest.raises(Conflict, match="the object has been modified"):
        store.delete(VS_KEY, resource_version=rv)
    store.get(VS_KEY)


def test_an_object_with_finalizers_is_marked_and_goes_when_the_last_one_is_removed(
    store: ResourceStore,
) -> None:
    obj = vs()
    obj["metadata"]["finalizers"] = ["example.com/a", "example.com/b"]
    store.create(obj, manager="kubectl")
    marked = store.delete(VS_KEY)
    assert marked["metadata"]["deletionTimestamp"] == "2024-05-01T12:00:00Z"
    assert store.get(VS_KEY) == marked, "still there while finalizers remain"
    assert store.delete(VS_KEY) == marked, "deleting again changes nothing"
    live = store.get(VS_KEY)
    live["metadata"]["finalizers"] = ["example.com/b"]
    live["spec"]["hosts"] = ["changed"]
    updated = store.update(live, manager="controller")
    assert updated["metadata"]["deletionTimestamp"] == "2024-05-01T12:00:00Z"
    assert updated["spec"]["hosts"] == ["changed"]
    updated["metadata"]["finalizers"] = ["example.com/b", "example.com/new"]
    with pytest.raises(Invalid, match="no new finalizers can be added"):
        store.update(updated, manager="controller")
    updated["metadata"]["finalizers"] = []
    store.update(updated, manager="controller")
    with pytest.raises(NotFound):
        store.get(VS_KEY)


def test_the_server_owns_the_deletion_timestamp(store: ResourceStore) -> None:
    obj = vs()
    obj["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    created = store.create(obj, manager="kubectl")
    assert "deletionTimestamp" not in created["metadata"]
    store.delete(VS_KEY)
    with pytest.raises(NotFound):
        store.get(VS_KEY)


def test_list_sorted_by_namespace_and_name_with_store_revision(store: ResourceStore) -> None:
    for ns, name in [("b", "x"), ("a", "z"), ("a", "y")]:
        store.apply(configmap(name, namespace=ns), manager="kubectl")
    last = store.apply(vs(), manager="kubectl")
    items, revision = store.list("", "ConfigMap")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items] == [
        ("a", "y"),
        ("a", "z"),
        ("b", "x"),
    ]
    assert revision == last["metadata"]["resourceVersion"]
    only_a, _ = store.list("", "ConfigMap", namespace="a")
    assert [o["metadata"]["name"] for o in only_a] == ["y", "z"]
    assert store.list("networking.istio.io", "VirtualService", namespace="a") == ([], revision)


def test_list_by_label_selector(store: ResourceStore) -> None:
    store.apply(configmap("v1", labels={"app": "reviews", "version": "v1"}), manager="m")
    store.apply(configmap("v2", labels={"app": "reviews", "version": "v2"}), manager="m")
    store.apply(configmap("db", labels={"app": "mysql"}), manager="m")
    store.apply(configmap("bare"), manager="m")

    def names(selector: str) -> list[str]:
        return [
            o["metadata"]["name"] for o in store.list("", "ConfigMap", label_selector=selector)[0]
        ]

    assert names("app=reviews,version!=v1") == ["v2"]
    assert names("app in (reviews, mysql),version notin (v2)") == ["db", "v1"]
    assert names("!app") == ["bare"]
    assert names("version") == ["v1", "v2"]
    assert names("") == ["bare", "db", "v1", "v2"]
    with pytest.raises(BadRequest, match='unable to parse label selector "app in reviews"'):
        store.list("", "ConfigMap", label_selector="app in reviews")


def test_validation_failure_stores_nothing(make_store) -> None:
    def reject_bad_hosts(obj: dict) -> None:
        if "bad" in obj.get("spec", {}).get("hosts", []):
            raise Invalid('VirtualService default/reviews: spec.hosts[0]: Invalid value: "bad"')

    store = make_store(validate=reject_bad_hosts)
    with pytest.raises(Invalid, match=r"spec\.hosts"):
        store.apply(vs(hosts=["bad"]), manager="kubectl")
    with pytest.raises(NotFound):
        store.get(VS_KEY)
    good = store.apply(vs(hosts=["good"]), manager="kubectl")
    for write in (
        lambda: store.apply(vs(hosts=["bad"]), manager="kubectl"),
        lambda: store.update(vs(hosts=["bad"]), manager="kubectl"),
        lambda: store.create(vs("other", hosts=["bad"]), manager="kubectl"),
    ):
        with pytest.raises(Invalid):
            write()
    assert store.get(VS_KEY) == good
    assert (
        store.list("networking.istio.io", "VirtualService")[1]
        == good["metadata"]["resourceVersion"]
    )


def test_validate_sees_the_merged_object(make_store) -> None:
    seen: list[dict] = []
    store = make_store(validate=seen.append)
    store.apply(vs(hosts=["a"]), manager="alice")
    store.apply(vs(gateways=["gw"]), manager="bob")
    assert seen[-1]["spec"] == {"hosts": ["a"], "gateways": ["gw"]}


def test_dry_run_returns_the_result_and_stores_nothing(store: ResourceStore) -> None:
    preview = store.apply(vs(), manager="kubectl", dry_run=True)
    assert preview["spec"] == {"hosts": ["reviews"]}
    assert preview["metadata"]["generation"] == 1
    with pytest.raises(NotFound):
        store.get(VS_KEY)
    assert store.create(vs(), manager="kubectl", dry_run=True)["spec"] == {"hosts": ["reviews"]}
    with pytest.raises(NotFound):
        store.get(VS_KEY)
    real = store.apply(vs(), manager="kubectl")
    changed = store.apply(vs(hosts=["x"]), manager="kubectl", dry_run=True)
    assert changed["spec"] == {"hosts": ["x"]} and changed["metadata"]["generation"] == 2
    assert store.update(vs(hosts=["y"]), manager="kubectl", dry_run=True)["spec"] == {
        "hosts": ["y"]
    }
    store.delete(VS_KEY, dry_run=True)
    assert store.get(VS_KEY) == real


def test_unchanged_apply_writes_nothing(store: ResourceStore, clock) -> None:
    first = store.apply(vs(), manager="kubectl")
    clock.advance(10)
    again = store.apply(vs(), manager="kubectl")
    assert again == first
    assert (
        store.list("networking.istio.io", "VirtualService")[1]
        == first["metadata"]["resourceVersion"]
    )


def test_concurrent_appliers_all_land(store: ResourceStore) -> None:
    """Threads applying different labels to one object: compare-and-swap retries,
    so every label is there at the end and no write is lost."""
    store.apply(configmap("shared"), manager="init")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                store.apply(
                    configmap("shared", labels={f"w{n}-{i}": "x"}), manager=f"worker-{n}-{i}"
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    labels = store.get(Key("", "ConfigMap", "default", "shared"))["metadata"]["labels"]
    assert len(labels) == 40


WRITER = Path(__file__).with_name("concurrent_writer.py")


def test_writers_in_several_processes_lose_no_update(
    backend_name: str, make_store, tmp_path: Path
) -> None:
    """Processes with their own connections (control planes on several hosts):
    optimistic updates of one counter all count, conflicts are reported to the
    loser rather than overwritten, and concurrent applies all land."""
    store = make_store()
    store.apply(configmap("counter", data={"n": "0"}), manager="init")
    store.apply(configmap("labels"), manager="init")
    writers, count = 3, 15
    children = [
        subprocess.Popen(
            [sys.executable, str(WRITER), backend_name, str(tmp_path), f"w{n}", str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    counter = store.get(Key("", "ConfigMap", "default", "counter"))
    assert counter["data"] == {"n": str(writers * count)}
    assert counter["metadata"]["generation"] == 1 + writers * count  # one write per increment
    labels = store.get(Key("", "ConfigMap", "default", "labels"))["metadata"]["labels"]
    assert len(labels) == writers * count
