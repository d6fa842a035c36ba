"""validate(), validate_or_raise() and analyze() as the store and CLI call them:
exact messages for Istio's semantic rules, metadata, core kinds and Workload."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.analysis import warnings_for
from pilotfish.api.errors import Invalid
from pilotfish.api.validation import validate, validate_or_raise


def messages(obj: dict[str, Any]) -> list[str]:
    return [str(e) for e in validate(obj)]


def vs(spec: dict[str, Any], name: str = "reviews") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def dr(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": spec,
    }


def route(*destinations: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"destination": {"host": host}, "weight": weight} for host, weight in destinations]


# --- kinds and metadata -------------------------------------------------------


def test_unknown_kind_is_an_error_not_an_exception() -> None:
    assert messages({"apiVersion": "networking.istio.io/v1", "kind": "Route"}) == [
        'kind: Invalid value: "Route": no kind "Route" is registered for version "networking.istio.io/v1"'
    ]
    assert messages({"apiVersion": "example.com/v1", "kind": "Thing"})[0].startswith(
        "apiVersion: Invalid value"
    )
    assert messages({"kind": "Service"}) == ["apiVersion: Required value"]


def test_name_is_required_and_a_dns_subdomain() -> None:
    obj = vs({"hosts": ["reviews"], "http": [{"route": route(("reviews", 0))}]})
    obj["metadata"] = {}
    assert messages(obj) == ["metadata.name: Required value"]
    obj["metadata"] = {"name": "Reviews_1"}
    assert messages(obj)[0].startswith(
        'metadata.name: Invalid value: "Reviews_1": a lowercase RFC 1123 subdomain'
    )


def test_namespace_labels_and_system_fields() -> None:
    obj = vs({"hosts": ["reviews"], "http": [{"route": route(("reviews", 0))}]})
    obj["metadata"] = {
        "name": "r",
        "namespace": "a.b",
        "labels": {"app": "ok", "bad key!": "v"},
        "uid": "x",
        "resourceVersion": "7",
        "generation": 2,
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "managedFields": [],
    }
    found = messages(obj)
    assert found[0].startswith(
        'metadata.namespace: Invalid value: "a.b": a lowercase RFC 1123 label'
    )
    assert found[1].startswith('metadata.labels: Invalid value: "bad key!": name part must consist')
    assert len(found) == 2


def test_validate_or_raise_names_the_object() -> None:
    with pytest.raises(Invalid) as caught:
        validate_or_raise(vs({"hosts": ["reviews"], "http": [{"route": route(("reviews", -1))}]}))
    assert caught.value.message == (
        "VirtualService default/reviews: spec.http[0].route[0].weight: Invalid value: -1: must be >= 0"
    )
    assert caught.value.code == 422


# --- structural ---------------------------------------------------------------


def test_schema_errors_in_kubernetes_words() -> None:
    assert messages(vs({"hosts": ["r"], "http": [{"route": route(("r", 1))}], "foo": 1})) == [
        "spec.foo: field not declared in schema"
    ]
    obj = dr({"host": "r", "trafficPolicy": {"tls": {"mode": "FOO"}}})
    assert messages(obj) == [
        'spec.trafficPolicy.tls.mode: Unsupported value: "FOO": supported values: '
        '"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"'
    ]
    assert messages(dr({})) == ["spec.host: Required value"]


def test_status_is_only_required_to_be_an_object() -> None:
    obj = vs({"hosts": ["r"], "http": [{"route": route(("r", 1))}]})
    obj["status"] = {"anything": [1, 2]}
    assert messages(obj) == []
    obj["status"] = "done"
    assert messages(obj) == [
        'status: Invalid value: "string": status in body must be of type object: "string"'
    ]


# --- VirtualService -----------------------------------------------------------


def test_hosts_required_unless_delegate() -> None:
    assert messages(vs({"http": [{"route": route(("r", 1))}]})) == []
    assert messages(vs({"gateways": ["gw"], "http": [{"route": route(("r", 1))}]})) == [
        "spec.gateways: delegate virtual service must have no gateways specified"
    ]
    assert messages(vs({"hosts": ["r"]})) == [
        "spec: http, tcp or tls must be provided in virtual service"
    ]


def test_route_redirect_direct_response_are_exclusive() -> None:
    both = {"route": route(("r", 1)), "redirect": {"uri": "/x"}}
    assert messages(vs({"hosts": ["r"], "http": [both]})) == [
        "spec.http[0]: HTTP route cannot contain both route and redirect"
    ]
    assert messages(vs({"hosts": ["r"], "http": [{"timeout": "1s"}]})) == [
        "spec.http[0]: HTTP route, redirect or direct response is required"
    ]


def test_weights() -> None:
    assert messages(vs({"hosts": ["r"], "http": [{"route": route(("a", 80), ("b", 20))}]})) == []
    # Istio normalises weights that do not sum to 100; only an all-zero split is refused.
    assert messages(vs({"hosts": ["r"], "http": [{"route": route(("a", 1), ("b", 2))}]})) == []
    assert messages(vs({"hosts": ["r"], "http": [{"route": route(("a", 0), ("b", 0))}]})) == [
        "spec.http[0].route: total destination weight = 0"
    ]


def test_durations_retries_fault_mirror() -> None:
    http = {
        "route": route(("r", 0)),
        "timeout": "1500us",
        "retries": {"attempts": -1, "perTryTimeout": "2s"},
        "fault": {"abort": {"httpStatus": 700, "percentage": {"value": 10}}},
        "mirrorPercentage": {"value": 101},
    }
    assert messages(vs({"hosts": ["r"], "http": [http]})) == [
        'spec.http[0].timeout: Invalid value: "1500us": only durations to ms precision are supported',
        "spec.http[0].retries.attempts: Invalid value: -1: attempts cannot be negative",
        "spec.http[0].fault.abort.httpStatus: Invalid value: 700: HTTP status 700 is not in range 200-599",
        "spec.http[0].mirrorPercentage.value: Invalid value: 101: mirror_percentage must have a max value of 100 (it has 101.000000)",
    ]
    assert messages(
        vs({"hosts": ["r"], "http": [{"route": route(("r", 0)), "timeout": "0.5ms"}]})
    ) == [
        'spec.http[0].timeout: Invalid value: "string": must be a valid duration greater than 1ms'
    ]


def test_regex_is_re2() -> None:
    http = {
        "match": [{"uri": {"regex": "(?!admin).*"}}, {"headers": {"x": {"regex": "(a)\\1"}}}],
        "route": route(("r", 0)),
    }
    found = messages(vs({"hosts": ["r"], "http": [http]}))
    assert found[0].startswith(
        'spec.http[0].match[0].uri.regex: Invalid value: "(?!admin).*": invalid perl operator'
    )
    assert found[1].startswith("spec.http[0].match[1].headers[x].regex: Invalid value")
    assert "Istio uses RE2 style regex-based match" in found[1]


def test_hosts_and_gateways_format() -> None:
    found = messages(vs({"hosts": ["*", "bad_host"], "http": [{"route": route(("r", 0))}]}))
    assert found == [
        'spec.hosts[0]: Invalid value: "*": wildcard host * is not allowed for virtual services bound to the mesh gateway',
        'spec.hosts[1]: Invalid value: "bad_host": domain name "bad_host" invalid (label "bad_host" invalid)',
    ]
    found = messages(
        vs(
            {
                "hosts": ["r.example.com"],
                "gateways": ["ns/Gw_1"],
                "http": [{"route": route(("r", 0))}],
            }
        )
    )
    assert found == [
        'spec.gateways[0]: Invalid value: "ns/Gw_1": invalid value for gateway name: "Gw_1"'
    ]


# --- DestinationRule, Gateway, others ----------------------------------------------


def test_destination_rule_subsets() -> None:
    spec = {
        "host": "reviews",
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v1", "labels": {"version": "v2"}},
            {"name": "V.2", "labels": {"version": "v2"}},
        ],
    }
    assert messages(dr(spec)) == [
        'spec.subsets[1].name: Invalid value: "v1": duplicate subset names: v1',
        'spec.subsets[2].name: Invalid value: "V.2": subset name is invalid: V.2',
    ]


def test_destination_rule_exclusive_hash_and_pool_ranges() -> None:
    lb = {"consistentHash": {"httpHeaderName": "x", "useSourceIp": True}}
    assert messages(dr({"host": "r", "trafficPolicy": {"loadBalancer": lb}})) == [
        'spec.trafficPolicy.loadBalancer.consistentHash: Invalid value: "object": only one of httpHeaderName, useSourceIp may be set'
    ]
    outlier = {"maxEjectionPercent": 120}
    assert messages(dr({"host": "r", "trafficPolicy": {"outlierDetection": outlier}})) == [
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent: Invalid value: 120: percentage 120 is not in range 0..100"
    ]


def test_gateway_needs_tls_for_https() -> None:
    gw = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["*.example.com"],
                }
            ]
        },
    }
    assert messages(gw) == [
        "spec.servers[0].tls: Required value: server must have TLS settings for HTTPS/TLS protocols"
    ]


def test_service_entry_and_sidecar() -> None:
    se = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "e"},
        "spec": {
            "hosts": ["api.example.com"],
            "addresses": ["10.0.0.0/33"],
            "resolution": "STATIC",
        },
    }
    assert messages(se) == [
        'spec.addresses[0]: Invalid value: "10.0.0.0/33": 10.0.0.0/33 is not a valid CIDR block'
    ]
    sc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "s"},
        "spec": {"egress": [{"hosts": ["reviews"]}]},
    }
    assert messages(sc) == [
        'spec.egress[0].hosts[0]: Invalid value: "reviews": host must be of form namespace/dnsName'
    ]


def test_authorization_policy_semantics() -> None:
    ap = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "a"},
        "spec": {
            "action": "DENY",
            "rules": [
                {
                    "to": [{"operation": {"ports": ["99999"]}}],
                    "when": [{"key": "source.ip", "values": ["1.2.3"]}],
                }
            ],
        },
    }
    assert messages(ap) == [
        'spec.rules[0].to[0].operation.ports[0]: Invalid value: "99999": port number 99999 must be in the range 1..65535',
        'spec.rules[0].when[0].values[0]: Invalid value: "1.2.3": 1.2.3 is not a valid IP',
    ]


def test_authorization_policy_target_refs_refused_as_gateway_api() -> None:
    for field, value in (
        ("targetRefs", [{"group": "", "kind": "Service", "name": "productpage"}]),
        ("targetRef", {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}),
    ):
        ap = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {field: value, "rules": [{}]},
        }
        [message] = messages(ap)
        assert message.startswith(f"spec.{field}: Forbidden: `{field}` attaches a policy")
        assert "Kubernetes Gateway API" in message


# --- analyze ------------------------------------------------------------------


def test_analyze_warns_about_missing_subsets_and_gateways() -> None:
    stored = {
        ("networking.istio.io", "DestinationRule", "default"): [
            {
                **dr({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
                "metadata": {"name": "reviews", "namespace": "default"},
            }
        ],
        ("", "Service", "default"): [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "reviews", "namespace": "default"},
            }
        ],
    }
    obj = vs(
        {
            "hosts": ["reviews"],
            "gateways": ["bookinfo-gateway"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50},
                    ]
                }
            ],
        }
    )
    warnings = warnings_for(obj, lambda group, kind, ns: stored.get((group, kind, "default"), []))
    assert warnings == [
        'Error [IST0101] (VirtualService default/reviews) Referenced gateway not found: "bookinfo-gateway"',
        "Error [IST0101] (VirtualService default/reviews) Referenced host+subset in destinationrule "
        'not found: "reviews+v3"',
        "Warning [IST0132] (VirtualService default/reviews) one or more host [reviews] defined in "
        "VirtualService default/reviews not found in Gateway default/bookinfo-gateway.",
    ]
    assert validate(obj) == []  # warnings never reject


# --- Istio's header and mirror rules (pkg/config/validation/virtualservice.go) -------


def _route(**extra: Any) -> dict[str, Any]:
    return vs(
        {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}], **extra}]}
    )


def test_header_operations_keep_host_and_pseudo_headers() -> None:
    obj = _route(
        headers={
            "request": {"set": {"Host": "a.example.com", ":path": "/x"}, "remove": ["host"]},
            "response": {"add": {"Host": "b"}, "set": {"x-ok": "v\nw"}, "remove": [""]},
        }
    )
    assert messages(obj) == [
        'spec.http[0].headers.request.set: Invalid value: ":path": invalid header ":path": '
        'header cannot have ":" prefix',
        'spec.http[0].headers.request.remove[0]: Invalid value: "host": invalid header "host": '
        "cannot set Host header",
        'spec.http[0].headers.response.add: Invalid value: "Host": invalid header "Host": '
        "cannot set Host header",
        'spec.http[0].headers.response.set[x-ok]: Invalid value: "v\nw": header value '
        "configuration v\nw is invalid",
        'spec.http[0].headers.response.remove[0]: Invalid value: "": header name cannot be empty',
    ]


def test_destination_headers_and_the_authority_set_twice() -> None:
    obj = vs(
        {
            "hosts": ["reviews"],
            "http": [
                {
                    "route": [
                        {
                            "destination": {"host": "reviews"},
                            "headers": {
                                "request": {"set": {"host": "a"}, "add": {":authority": "b"}}
                            },
                        }
                    ]
                }
            ],
        }
    )
    assert messages(obj) == [
        "spec.http[0].route[0].headers.request.add: authority header cannot be set multiple "
        'times: have "a", attempting to set "b"'
    ]


def test_match_header_names_allow_jwt_claims_and_pseudo_headers() -> None:
    ok = {"exact": "x"}
    good = _route(
        match=[
            {
                "headers": {
                    "@request.auth.claims.groups": ok,
                    "@request.auth.claims[nested][key]": ok,
                    ":authority": ok,
                    "end-user": ok,
                },
                "withoutHeaders": {"x-canary": ok},
            }
        ]
    )
    good["spec"]["gateways"] = ["istio-system/ingress"]  # claims are a gateway's to match
    assert messages(good) == []
    bad = _route(match=[{"headers": {"bad header": ok, "@request.auth.claims": ok}}])
    bad["spec"]["gateways"] = ["istio-system/ingress"]
    assert messages(bad) == [
        'spec.http[0].match[0].headers: Invalid value: "bad header": header name bad header '
        "is not a valid header name",
        'spec.http[0].match[0].headers: Invalid value: "@request.auth.claims": header name '
        "@request.auth.claims is not a valid header name",
    ]


def test_mirror_shares_in_istios_words() -> None:
    mirror = {"host": "reviews"}
    assert messages(_route(mirror=mirror, mirrorPercentage={"value": -1})) == [
        "spec.http[0].mirrorPercentage.value: Invalid value: -1: mirror_percentage must have a "
        "min value of 0 (it has -1.000000)"
    ]
    assert messages(
        _route(mirror=mirror, mirrors=[{"destination": mirror, "percentage": {"value": 150.5}}])
    ) == [
        "spec.http[0]: HTTP route cannot contain both mirror and mirrors",
        "spec.http[0].mirrors[0].percentage.value: Invalid value: 150.5: mirror percentage must "
        "have a max value of 100 (it has 150.500000)",
    ]


def test_jwt_claim_routes_only_on_gateways() -> None:
    claim = {"@request.auth.claims.groups": {"exact": "admin"}}
    mesh = _route(match=[{"headers": claim}])
    assert messages(mesh) == [
        "spec.http[0].match[0].headers: JWT claim based routing (key: "
        "@request.auth.claims.groups) is only supported for gateway, found no gateways: []"
    ]
    gateway = {**mesh, "spec": {**mesh["spec"], "gateways": ["istio-system/ingress", "mesh"]}}
    assert messages(gateway) == []
