"""A Sidecar's view is built from the hosts of the namespaces its egress
names (a shortcut for meshes of many namespaces); it must equal the view
built by checking every host of the mesh, for any egress."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.model import Proxy, build_snapshot
from pilotfish.model.snapshot import _Index

Obj = dict[str, Any]
NAMESPACES = ("a", "b", "c")


def _service(name: str, ns: str, export_to: list[str]) -> Obj:
    spec: Obj = {"ports": [{"name": "http", "port": 80}]}
    if export_to:
        spec["exportTo"] = export_to
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": spec}  # fmt: skip


def _entry(host: str, ns: str) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.replace(".", "-"), "namespace": ns},
        "spec": {"hosts": [host], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                 "resolution": "DNS"},
    }  # fmt: skip


def _sidecar(ns: str, hosts: list[str]) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"egress": [{"hosts": hosts}]},
    }


EGRESS_HOST = st.sampled_from(
    ["./*", "*/*", "~/*", "a/*", "b/*", "c/*", "./one.a.svc.cluster.local", "*/api.example.com",
     "b/api.example.com", "a/*.svc.cluster.local", "c/two.c.svc.cluster.local"]
)  # fmt: skip
EXPORT = st.sampled_from([[], ["."], ["*"], ["a"], ["b", "c"]])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(("one", "two")), st.sampled_from(NAMESPACES), EXPORT)),
    st.lists(st.sampled_from(NAMESPACES), max_size=3),
    st.dictionaries(st.sampled_from(NAMESPACES), st.lists(EGRESS_HOST, min_size=1, max_size=3)),
)
def test_a_sidecars_view_equals_the_view_over_every_host(
    services: list[tuple[str, str, list[str]]],
    entries: list[str],
    sidecars: dict[str, list[str]],
) -> None:
    objects = [_service(name, ns, export) for name, ns, export in services]
    objects += [_entry("api.example.com", ns) for ns in set(entries)]
    objects += [_sidecar(ns, hosts) for ns, hosts in sidecars.items()]
    scoped = build_snapshot(objects)
    everything = build_snapshot(objects)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Index, "_candidate_hosts", lambda self, *_: sorted(self.by_host))
        unscoped = {ns: everything.view(Proxy(f"p.{ns}", ns)) for ns in NAMESPACES}
    for ns in NAMESPACES:
        assert scoped.view(Proxy(f"p.{ns}", ns)) == unscoped[ns], (ns, sidecars.get(ns))
