"""The DestinationRule subsets `virtualservice.DestinationRuleAnalyzer` looks
up by host give exactly what checking every rule gives (the scan they replace,
kept here as the oracle), for random rules, hosts, wildcards and exportTo."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.analysis.config import (
    Config,
    export_scope,
    hosts_match,
    items,
    mapping,
    namespace_of,
    spec,
    to_fqdn,
    visible_from,
)
from pilotfish.analysis.virtualservice import _Subsets

NAMESPACES = ["a", "b"]
HOSTS = ["svc", "other", "svc.b", "svc.a.svc.cluster.local", "*.a.svc.cluster.local", "*", ""]
HOSTS += ["*.svc.cluster.local", "ext.example.com", "*.example.com"]
SUBSETS = ["v1", "v2", "v3"]


def oracle(config: Config, namespace: str, host: str, subset: str) -> bool:
    fqdn = to_fqdn(namespace, host)
    for rule in config.of("networking.istio.io", "DestinationRule"):
        scope = export_scope(items(spec(rule).get("exportTo")), namespace_of(rule))
        if not visible_from(scope, namespace):
            continue
        rule_host = to_fqdn(namespace_of(rule), str(spec(rule).get("host") or ""))
        subsets = items(spec(rule).get("subsets"))
        if hosts_match(rule_host, fqdn) and any(mapping(s).get("name") == subset for s in subsets):
            return True
    return False


rules = st.lists(
    st.builds(
        lambda i, ns, host, export, names: {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": f"dr-{i}", "namespace": ns},
            "spec": {
                "host": host,
                "subsets": [{"name": n} for n in names],
                **({"exportTo": export} if export is not None else {}),
            },
        },
        st.integers(0, 10_000),
        st.sampled_from(NAMESPACES),
        st.sampled_from(HOSTS),
        st.none() | st.lists(st.sampled_from([".", "*", "a", "b"]), max_size=2),
        st.lists(st.sampled_from(SUBSETS), max_size=3),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    rules,
    st.lists(
        st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(HOSTS), st.sampled_from(SUBSETS)),
        min_size=1,
        max_size=10,
    ),
)
def test_lookup_by_host_equals_the_scan(
    objects: list[dict[str, Any]], queries: list[tuple[str, str, str]]
) -> None:
    config = Config(objects)
    index = _Subsets(config)
    for namespace, host, subset in queries:
        assert index.defined(namespace, host, subset) == oracle(config, namespace, host, subset)
