"""The RBAC filter by simulation: AuthorizationPolicies translated as the
control plane translates them, compiled into the sidecar's filter chain, and
requests decided without sockets."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from filters_sim import ALLOW_GET, RBAC_PER_ROUTE_T, ROUTER, http_filters, per_route, request

from pilotfish.proxy.filters import Connection, FilterConfigError, LocalReply, compile_http_filters
from pilotfish.proxy.filters.base import Proceed
from pilotfish.translate.authz import AuthzSettings, translate_rbac_http

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
PLAIN = Connection("10.0.0.7", "10.0.0.9", 9080)


def policy(name: str, spec: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if dry_run:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    return {"metadata": meta, "spec": spec}


@dataclass
class Decision:
    status: int  # 0: forwarded upstream
    body: bytes
    details: str
    counters: Counter[str]
    metadata: dict[str, dict[str, Any]]


def decide(
    policies: list[dict[str, Any]],
    req: Any = None,
    conn: Connection = PLAIN,
    metadata: dict[str, dict[str, Any]] | None = None,
) -> Decision:
    filters = translate_rbac_http(policies, AuthzSettings())
    chain = compile_http_filters([*filters, *http_filters(ROUTER)])
    counters: Counter[str] = Counter()
    ex = chain.start(req or request(), connection=conn, counters=counters)
    ex.dynamic_metadata.update(metadata or {})
    step = chain.decode(ex, random.Random(1))
    if isinstance(step, LocalReply):
        return Decision(step.status, step.body, step.details, counters, ex.dynamic_metadata)
    assert isinstance(step, Proceed)
    return Decision(0, b"", "", counters, ex.dynamic_metadata)


def test_allow_nothing_denies_every_request_as_envoy_does() -> None:
    got = decide([policy("allow-nothing", {})])
    assert (got.status, got.body) == (403, b"RBAC: access denied")
    assert got.details == "rbac_access_denied_matched_policy[none]"
    assert got.counters == {"rbac.denied": 1}


def test_allow_get_to_productpage_only() -> None:
    allow = policy(
        "productpage-viewer",
        {"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    )
    assert decide([allow], request("GET", "/productpage")).status == 0
    assert decide([allow], request("POST", "/productpage")).status == 403


def test_deny_beats_allow_and_names_the_matched_policy() -> None:
    policies = [
        policy("allow-all", {"rules": [{}]}),
        policy(
            "deny-admin",
            {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
        ),
    ]
    denied = decide(policies, request("GET", "/admin/users?x=1"))
    assert denied.status == 403
    assert (
        denied.details
        == "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]"
    )
    assert decide(policies, request("GET", "/index")).counters == {"rbac.allowed": 2}


def test_dry_run_denies_nothing_and_counts_shadow_denied() -> None:
    dry = policy(
        "deny-get",
        {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        dry_run=True,
    )
    got = decide([dry], request("GET", "/"))
    assert got.status == 0
    assert got.counters == {"rbac.istio_dry_run_deny_shadow_denied": 1}
    assert got.metadata["envoy.filters.http.rbac"] == {
        "istio_dry_run_deny_shadow_effective_policy_id": "ns[default]-policy[deny-get]-rule[0]",
        "istio_dry_run_deny_shadow_engine_result": "denied",
    }
    assert decide([dry], request("POST", "/")).counters == {
        "rbac.istio_dry_run_deny_shadow_allowed": 1
    }


def test_principals_need_a_verified_peer_certificate() -> None:
    """No mTLS on the wire yet: a plaintext peer has no principal, so a
    principal rule never matches, and a notPrincipals DENY matches everyone."""
    allow = policy(
        "from-productpage",
        {
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]
                            }
                        }
                    ]
                }
            ]
        },
    )
    assert decide([allow]).status == 403
    mtls = Connection("10.0.0.7", "10.0.0.9", 9080, peer_principal=PRODUCTPAGE)
    assert decide([allow], conn=mtls).status == 0
    other = Connection(
        "10.0.0.7", "10.0.0.9", 9080, peer_principal="spiffe://cluster.local/ns/x/sa/y"
    )
    assert decide([allow], conn=other).status == 403
    deny = policy(
        "not-productpage",
        {"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]},
    )
    assert decide([deny]).status == 403
    assert decide([deny], conn=mtls).status == 0
    by_namespace = policy("ns", {"rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]})
    assert decide([by_namespace]).status == 403
    assert decide([by_namespace], conn=mtls).status == 0


@pytest.mark.parametrize(
    ("source", "headers", "allowed"),
    [
        ({"ipBlocks": ["10.0.0.0/24"]}, {}, True),
        ({"ipBlocks": ["10.1.0.0/16"]}, {}, False),
        ({"notIpBlocks": ["10.0.0.7"]}, {}, False),
        ({"remoteIpBlocks": ["192.0.2.0/24"]}, {"x-forwarded-for": "203.0.113.1, 192.0.2.5"}, True),
        ({"remoteIpBlocks": ["192.0.2.0/24"]}, {}, False),  # no XFF: the peer, 10.0.0.7
    ],
)
def test_ip_blocks(source: dict[str, Any], headers: dict[str, str], allowed: bool) -> None:
    got = decide(
        [policy("ip", {"rules": [{"from": [{"source": source}]}]})], request("GET", "/", headers)
    )
    assert (got.status == 0) is allowed


@pytest.mark.parametrize(
    ("operation", "method", "path", "allowed"),
    [
        ({"paths": ["/api/{*}/info"]}, "GET", "/api/v1/info", True),
        ({"paths": ["/api/{*}/info"]}, "GET", "/api/v1/x/info", False),
        ({"paths": ["/api/{**}/info"]}, "GET", "/api/v1/x/info", True),
        ({"paths": ["*/info"]}, "GET", "/a/info?q=1", True),
        ({"paths": ["/exact"]}, "GET", "/exact/", False),
        ({"hosts": ["SVC"]}, "GET", "/", True),  # hosts ignore case
        ({"ports": ["9080"]}, "GET", "/", True),
        ({"notPorts": ["9080"]}, "GET", "/", False),
        ({"methods": ["GET"], "notPaths": ["/private*"]}, "GET", "/private/x", False),
    ],
)
def test_operations(operation: dict[str, Any], method: str, path: str, allowed: bool) -> None:
    got = decide(
        [policy("op", {"rules": [{"to": [{"operation": operation}]}]})], request(method, path)
    )
    assert (got.status == 0) is allowed


def test_when_conditions() -> None:
    rule = {
        "when": [
            {"key": "request.headers[x-token]", "values": ["admin-*"]},
            {"key": "destination.port", "values": ["9080"]},
            {"key": "destination.ip", "values": ["10.0.0.0/8"]},
            {"key": "source.ip", "notValues": ["10.0.0.8"]},
        ]
    }
    allow = policy("when", {"rules": [rule]})
    assert decide([allow], request("GET", "/", {"x-token": "admin-1"})).status == 0
    assert decide([allow], request("GET", "/", {"x-token": "user-1"})).status == 403
    assert decide([allow], request("GET", "/")).status == 403  # a missing header matches no value


def test_jwt_claims_read_from_jwt_authn_dynamic_metadata() -> None:
    """The interface with the jwt_authn filter: it leaves a verified token's
    claims under envoy.filters.http.jwt_authn -> payload."""
    allow = policy(
        "jwt",
        {
            "rules": [
                {
                    "from": [{"source": {"requestPrincipals": ["https://issuer.example/*"]}}],
                    "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}],
                }
            ]
        },
    )
    claims = {"iss": "https://issuer.example", "sub": "alice", "groups": ["group0", "group1"]}
    assert (
        decide([allow], metadata={"envoy.filters.http.jwt_authn": {"payload": claims}}).status == 0
    )
    claims["groups"] = ["group0"]
    assert (
        decide([allow], metadata={"envoy.filters.http.jwt_authn": {"payload": claims}}).status
        == 403
    )
    assert decide([allow]).status == 403  # no token: no request principal


def test_audit_never_denies() -> None:
    audit = policy("audit", {"action": "AUDIT", "rules": [{}]})
    got = decide([audit])
    assert got.status == 0
    assert got.counters == {"rbac.allowed": 1}


def test_unsupported_config_fails_the_chain_naming_the_field() -> None:
    bad = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "policies": {
                    "p": {
                        "permissions": [{"any": True}],
                        "principals": [{"filter_state": {"key": "k"}}],
                    }
                }
            },
        },
    }
    with pytest.raises(
        FilterConfigError,
        match=r"rules\.policies\[p\]\.principals\[0\]\.filter_state: not supported",
    ):
        compile_http_filters(http_filters(bad, ROUTER))


def test_rbac_filter_is_known_to_the_chain_by_name() -> None:
    protos = [hcm_pb2.HttpFilter(name="envoy.filters.http.rbac"), *http_filters(ROUTER)]
    chain = compile_http_filters(protos)  # no typed_config: an empty RBAC, allows all
    assert not chain.empty


def test_ext_authz_asks_only_where_the_custom_policy_matched_and_reads_the_answer() -> None:
    """Without sockets: the Check step, then the answer fed back as the shell does."""
    from pilotfish.proxy.filters import Check, CheckResult
    from pilotfish.translate.authz import translate_ext_authz_http

    custom = policy(
        "ext",
        {
            "action": "CUSTOM",
            "provider": {"name": "p"},
            "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}],
        },
    )
    settings = AuthzSettings(
        providers=(
            {"name": "p", "envoyExtAuthzHttp": {"service": "a.ns.svc.cluster.local", "port": 80}},
        ),
        services={"a.ns.svc.cluster.local": ("ns",)},
    )
    chain = compile_http_filters(
        [*translate_ext_authz_http([custom], settings), *http_filters(ROUTER)]
    )
    rng = random.Random(1)
    ex = chain.start(request("GET", "/y"), connection=PLAIN)
    assert isinstance(chain.decode(ex, rng), Proceed)
    ex = chain.start(
        request("POST", "/x", {"authorization": "Bearer t", "x-other": "1"}), connection=PLAIN
    )
    step = chain.decode(ex, rng)
    assert isinstance(step, Check)
    assert (step.cluster, step.method, step.path) == (
        "outbound|80||a.ns.svc.cluster.local",
        b"POST",
        b"/x",
    )
    assert dict(step.headers) == {b"host": b"svc", b"authorization": b"Bearer t"}
    ex.check_result = CheckResult(401, ((b"www-authenticate", b"Bearer"),), b"no")
    denied = chain.decode(ex, rng)
    assert isinstance(denied, LocalReply)
    assert (denied.status, denied.body, denied.details) == (401, b"no", "ext_authz_denied")
    assert ex.counters["ext_authz.denied"] == 1


def deny_all_chain() -> Any:
    return compile_http_filters(
        [
            *translate_rbac_http([policy("allow-nothing", {})], AuthzSettings()),
            *http_filters(ROUTER),
        ]
    )


def decide_on_route(chain: Any, configs: Any, req: Any) -> tuple[int, str, Counter[str]]:
    chain.prepare(configs)
    counters: Counter[str] = Counter()
    ex = chain.start(req, configs, connection=PLAIN, counters=counters)
    step = chain.decode(ex, random.Random(1))
    if isinstance(step, LocalReply):
        return step.status, step.details, counters
    return 0, "", counters


def test_rbac_per_route_without_rules_turns_the_filter_off_on_that_route_only() -> None:
    chain = deny_all_chain()
    off = per_route(**{"envoy.filters.http.rbac": {"@type": RBAC_PER_ROUTE_T}})
    assert decide_on_route(chain, off, request("POST", "/healthz"))[0] == 0
    status, details, counters = decide_on_route(chain, per_route(), request("GET", "/"))
    assert (status, details) == (403, "rbac_access_denied_matched_policy[none]")
    assert counters == {"rbac.denied": 1}


def test_rbac_per_route_rules_replace_the_filters_on_that_route() -> None:
    chain = deny_all_chain()
    own = per_route(**{"envoy.filters.http.rbac": {"@type": RBAC_PER_ROUTE_T, "rbac": ALLOW_GET}})
    assert decide_on_route(chain, own, request("GET", "/")) == (0, "", {"rbac.allowed": 1})
    status, details, counters = decide_on_route(chain, own, request("POST", "/"))
    assert (status, details, counters) == (
        403,
        "rbac_access_denied_matched_policy[none]",
        {"rbac.denied": 1},
    )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (
            {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"},
            "typed_per_filter_config",
        ),
        (
            {
                "@type": RBAC_PER_ROUTE_T,
                "rbac": {
                    "rules": {
                        "policies": {"p": {"condition": {"const_expr": {"bool_value": True}}}}
                    }
                },
            },
            "condition",
        ),
        ({"@type": RBAC_PER_ROUTE_T, "rbac": {"matcher": {}}}, "rbac.matcher"),
    ],
)
def test_a_per_route_rbac_that_cannot_be_enforced_rejects_the_route_config(
    config: dict[str, Any], field: str
) -> None:
    chain = deny_all_chain()
    with pytest.raises(FilterConfigError) as raised:
        chain.prepare(per_route(**{"envoy.filters.http.rbac": config}))
    assert field in str(raised.value)
