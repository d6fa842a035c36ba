"""Server-side apply with several field managers, as `kubectl apply --server-side` behaves."""

from __future__ import annotations

import pytest
from store_testkit import configmap, service, vs

from pilotfish.api.errors import BadRequest, Conflict, NotFound
from pilotfish.store import Key
from pilotfish.store.resources import ResourceStore

VS_KEY = Key("networking.istio.io", "VirtualService", "default", "reviews")
SVC_KEY = Key("", "Service", "default", "web")


def managed(obj: dict) -> dict[tuple[str, str], dict]:
    return {(m["manager"], m["operation"]): m for m in obj["metadata"].get("managedFields", [])}


def test_apply_creates_then_updates(store: ResourceStore) -> None:
    created = store.apply(vs(hosts=["reviews"]), manager="kubectl")
    assert created["metadata"]["generation"] == 1
    updated = store.apply(vs(hosts=["reviews", "ratings"]), manager="kubectl")
    assert updated["spec"]["hosts"] == ["reviews", "ratings"]
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]


def test_managed_fields_record_the_applied_fields(store: ResourceStore) -> None:
    obj = vs(hosts=["reviews"], http=[{"route": []}])
    obj["metadata"]["labels"] = {"app": "reviews"}
    result = store.apply(obj, manager="kubectl")
    entry = managed(result)[("kubectl", "Apply")]
    assert entry["apiVersion"] == "networking.istio.io/v1"
    assert entry["fieldsType"] == "FieldsV1"
    assert entry["time"] == "2024-05-01T12:00:00Z"
    assert entry["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {"f:hosts": {}, "f:http": {}},
    }


def test_applying_another_managers_field_conflicts_naming_field_and_manager(
    store: ResourceStore,
) -> None:
    store.apply(vs(hosts=["reviews"]), manager="alice")
    with pytest.raises(Conflict) as raised:
        store.apply(vs(hosts=["ratings"]), manager="bob")
    assert (
        raised.value.message == 'Apply failed with 1 conflict: conflict with "alice": .spec.hosts'
    )
    assert store.get(VS_KEY)["spec"]["hosts"] == ["reviews"]


def test_several_conflicts_are_all_listed_by_manager(store: ResourceStore) -> None:
    store.apply(vs(hosts=["a"], gateways=["gw"]), manager="alice")
    store.apply(vs(hosts=["a"], exportTo=["."]), manager="carol")
    with pytest.raises(Conflict) as raised:
        store.apply(vs(hosts=["b"], gateways=["other"], exportTo=["*"]), manager="bob")
    assert raised.value.message == (
        "Apply failed with 4 conflicts: "
        'conflicts with "alice":\n- .spec.gateways\n- .spec.hosts\n'
        'conflicts with "carol":\n- .spec.exportTo\n- .spec.hosts'
    )


def test_same_value_is_shared_ownership(store: ResourceStore) -> None:
    store.apply(vs(hosts=["reviews"]), manager="alice")
    shared = store.apply(vs(hosts=["reviews"], gateways=["gw"]), manager="bob")
    owners = managed(shared)
    assert owners[("alice", "Apply")]["fieldsV1"] == {"f:spec": {"f:hosts": {}}}
    assert owners[("bob", "Apply")]["fieldsV1"] == {"f:spec": {"f:gateways": {}, "f:hosts": {}}}
    # Bob stops applying hosts: alice still owns them, so they stay.
    after = store.apply(vs(gateways=["gw"]), manager="bob")
    assert after["spec"] == {"hosts": ["reviews"], "gateways": ["gw"]}
    # Now alice stops too: nobody owns hosts, so they go.
    after = store.apply(vs("reviews", exportTo=["."]), manager="alice")
    assert after["spec"] == {"gateways": ["gw"], "exportTo": ["."]}


def test_force_takes_ownership(store: ResourceStore) -> None:
    store.apply(vs(hosts=["reviews"], gateways=["gw"]), manager="alice")
    forced = store.apply(vs(hosts=["ratings"]), manager="bob", force=True)
    assert forced["spec"] == {"hosts": ["ratings"], "gateways": ["gw"]}
    owners = managed(forced)
    assert owners[("alice", "Apply")]["fieldsV1"] == {"f:spec": {"f:gateways": {}}}
    assert owners[("bob", "Apply")]["fieldsV1"] == {"f:spec": {"f:hosts": {}}}
    # Alice re-applying her old config now conflicts with bob.
    with pytest.raises(Conflict, match=r'conflict with "bob": \.spec\.hosts'):
        store.apply(vs(hosts=["reviews"], gateways=["gw"]), manager="alice")


def test_fields_no_longer_applied_are_removed(store: ResourceStore) -> None:
    first = configmap("cfg", data={"a": "1", "b": "2"}, labels={"app": "x", "tier": "web"})
    store.apply(first, manager="kubectl")
    result = store.apply(configmap("cfg", data={"a": "1"}, labels={"app": "x"}), manager="kubectl")
    assert result["data"] == {"a": "1"}
    assert result["metadata"]["labels"] == {"app": "x"}
    result = store.apply(configmap("cfg"), manager="kubectl")
    assert "labels" not in result["metadata"]


def test_maps_merge_per_key_between_managers(store: ResourceStore) -> None:
    store.apply(configmap("cfg", labels={"app": "x"}), manager="alice")
    merged = store.apply(configmap("cfg", labels={"team": "mesh"}), manager="bob")
    assert merged["metadata"]["labels"] == {"app": "x", "team": "mesh"}
    with pytest.raises(Conflict, match=r'conflict with "alice": \.metadata\.labels\.app'):
        store.apply(configmap("cfg", labels={"app": "y"}), manager="bob")


def test_status_in_an_apply_is_ignored(store: ResourceStore) -> None:
    obj = vs()
    obj["status"] = {"phase": "Faked"}
    result = store.apply(obj, manager="kubectl")
    assert "status" not in result
    store.update_status(VS_KEY, {"phase": "Real"}, manager="operator")
    assert store.apply(obj, manager="kubectl")["status"] == {"phase": "Real"}


def test_apply_resource_version_is_a_precondition(store: ResourceStore) -> None:
    rv = store.apply(vs(), manager="kubectl")["metadata"]["resourceVersion"]
    store.apply(vs(hosts=["x"]), manager="kubectl")
    stale = vs(hosts=["y"])
    stale["metadata"]["resourceVersion"] = rv
    with pytest.raises(Conflict, match="the object has been modified"):
        store.apply(stale, manager="kubectl")
    current = vs(hosts=["y"])
    current["metadata"]["resourceVersion"] = store.get(VS_KEY)["metadata"]["resourceVersion"]
    assert store.apply(current, manager="kubectl")["spec"]["hosts"] == ["y"]


def test_fields_set_by_update_conflict_with_apply(store: ResourceStore) -> None:
    store.create(vs(hosts=["reviews"]), manager="controller")
    with pytest.raises(Conflict) as raised:
        store.apply(vs(hosts=["ratings"]), manager="kubectl")
    assert raised.value.message == (
        'Apply failed with 1 conflict: conflict with "controller" using networking.istio.io/v1: .spec.hosts'
    )
    taken = store.apply(vs(hosts=["ratings"]), manager="kubectl", force=True)
    assert ("controller", "Update") not in managed(taken)


def test_update_takes_changed_fields_from_appliers(store: ResourceStore) -> None:
    store.apply(vs(hosts=["reviews"], gateways=["gw"]), manager="kubectl")
    current = store.get(VS_KEY)
    current["spec"]["gateways"] = ["mesh"]
    updated = store.update(current, manager="editor")
    owners = managed(updated)
    assert owners[("kubectl", "Apply")]["fieldsV1"] == {"f:spec": {"f:hosts": {}}}
    assert owners[("editor", "Update")]["fieldsV1"] == {"f:spec": {"f:gateways": {}}}


def test_list_map_items_merge_by_key(store: ResourceStore) -> None:
    store.apply(service("web", [{"port": 80, "protocol": "TCP", "name": "http"}]), manager="alice")
    both = store.apply(
        service("web", [{"port": 443, "protocol": "TCP", "name": "https"}]), manager="bob"
    )
    assert [p["port"] for p in both["spec"]["ports"]] == [80, 443]
    bob = managed(both)[("bob", "Apply")]["fieldsV1"]
    assert bob == {
        "f:spec": {
            "f:ports": {
                'k:{"port":443,"protocol":"TCP"}': {
                    ".": {},
                    "f:name": {},
                    "f:port": {},
                    "f:protocol": {},
                }
            }
        }
    }
    with pytest.raises(
        Conflict, match=r'conflict with "alice": \.spec\.ports\[port=80,protocol="TCP"\]\.name'
    ):
        store.apply(service("web", [{"port": 80, "protocol": "TCP", "name": "web"}]), manager="bob")
    # Bob adds a field to alice's item: no conflict, both own the item.
    shared = store.apply(
        service("web", [{"port": 80, "protocol": "TCP", "targetPort": 8080}]), manager="bob"
    )
    assert shared["spec"]["ports"] == [
        {"port": 80, "protocol": "TCP", "name": "http", "targetPort": 8080}
    ]
    # Bob dropped 443 from his config: nobody else owns it, so it is gone.
    # Alice stops applying port 80: bob still owns the item and targetPort, alice's name goes.
    after = store.apply(service("web", [], selector={"app": "web"}), manager="alice")
    assert after["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 8080}]


def test_atomic_map_is_owned_as_a_whole(store: ResourceStore) -> None:
    store.apply(service("web", [], labelsAtomic={"a": "1"}), manager="alice")
    with pytest.raises(Conflict, match=r"\.spec\.labelsAtomic$"):
        store.apply(service("web", [], labelsAtomic={"b": "2"}), manager="bob")


def test_apiversion_of_the_last_write_is_kept(store: ResourceStore) -> None:
    store.apply(vs(), manager="kubectl")
    old = vs()
    old["apiVersion"] = "networking.istio.io/v1beta1"
    result = store.apply(old, manager="kubectl")
    assert result["apiVersion"] == "networking.istio.io/v1beta1"
    assert managed(result)[("kubectl", "Apply")]["apiVersion"] == "networking.istio.io/v1beta1"
    assert result["metadata"]["generation"] == 1


def test_list_map_item_without_its_key_is_refused(store: ResourceStore) -> None:
    with pytest.raises(
        BadRequest,
        match=r'^\.spec\.ports: associative list with keys has an element that omits key field "protocol"$',
    ):
        store.apply(service("web", [{"port": 80}]), manager="alice")
    with pytest.raises(BadRequest, match=r"duplicate entries for key"):
        store.apply(service("web", [{"port": 80, "protocol": "TCP"}] * 2), manager="alice")
    with pytest.raises(NotFound):
        store.get(SVC_KEY)


def test_returned_objects_are_the_callers_to_keep(store: ResourceStore) -> None:
    obj = vs(hosts=["a"])
    created = store.create(obj, manager="kubectl")
    created["spec"]["hosts"].append("mutated")
    obj["spec"]["hosts"].append("also")
    assert store.get(VS_KEY)["spec"]["hosts"] == ["a"]
