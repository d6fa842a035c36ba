"""RequestAuthentication -> the inbound `envoy.filters.http.jwt_authn` filter, as
istiod builds it (pilot/pkg/security/authn/policy_applier.go, with jwksUri
fetched by the control plane and sent inline: istiod's default fetch mode).

    policies = applicable(request_authentications, namespace, labels)
    http_filter = translate_jwt_filter(policies, jwks)   # None: no JWT rules

Which policies apply (Istio's getConfigsForWorkload): every policy without a
selector in the root namespace (mesh-wide) or the workload's namespace, and
every policy of the workload's namespace whose selector matches its labels.
All of them apply together; their rules are sorted by issuer, each one a
provider `origins-N`, and the requirement is istiod's: a token, if present,
must be valid for its issuer; no token passes (only an AuthorizationPolicy can
demand one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import empty_pb2

from pilotfish.model.config import labels_match
from pilotfish.model.hosts import ROOT_NAMESPACE
from pilotfish.model.types import Labels
from pilotfish.objects import Obj
from pilotfish.translate.protos import pack

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_METADATA = "payload"  # istiod's filters.EnvoyJwtFilterPayload
SPACE_DELIMITED_CLAIMS = ("permission", "scope")  # istiod's defaults, always included
# What istiod inlines for a jwksUri it could not fetch: an RSA public key whose
# private half nobody holds, so every token of that issuer fails verification.
FAKE_JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "RSA",
                "kid": "pilotfish-jwks-unavailable",
                "e": "AQAB",
                "n": "mDA_0Zl-itey0jA5exguSl3CG5p_oxnTFT974jbLkhBE0bRfsr_GqwB1nqrrpX6CKbWxAIj_"
                "Tiye8cfRXm_AJFPpXrQuC3VPaOEi-Xg26rUIzlQKXU-7tavoUCfG6AESRVZj2qiOoqYnqqjyaYg2"
                "F7Lt8U2rs1zOsHzDsGZYmgafHZR4HNnQrguqiEk2tb7WYuTc-a9l8mTGjiLe_H0katRSyPIbPiU6"
                "3cUMWqJccmUOT4ZAhg9QUj-A9Vueb__bMhywY3wuGQ8_00t2Jx5_XJhZ9yK-Gt5iTjaSwBMFx8Z"
                "DiGKTqEoNpTziBoRXuR7izjLC2H5ImrzbtzgkJL7HSw",
            }
        ]
    },
    separators=(",", ":"),
)


def _meta(obj: Obj) -> Obj:
    meta: Obj = obj.get("metadata") or {}
    return meta


def selector_of(obj: Obj) -> Labels:
    labels: Labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return labels


def has_target_refs(obj: Obj) -> bool:
    spec = obj.get("spec") or {}
    return bool(spec.get("targetRef") or spec.get("targetRefs"))


def selects(obj: Obj, namespace: str, labels: Labels, root: str = ROOT_NAMESPACE) -> bool:
    """Whether a policy applies to a workload of `namespace` with `labels`. One
    with targetRefs (Gateway API attachment, which pilotfish has not) applies to none."""
    if has_target_refs(obj):
        return False
    policy_ns = str(_meta(obj).get("namespace") or "default")
    selector = selector_of(obj)
    if not selector:
        return policy_ns in (root, namespace)
    return policy_ns == namespace and labels_match(selector, labels)


def applicable(
    policies: Iterable[Obj], namespace: str, labels: Labels, root: str = ROOT_NAMESPACE
) -> list[Obj]:
    return [p for p in policies if selects(p, namespace, labels, root)]


def jwt_rules(policies: Iterable[Obj]) -> list[Obj]:
    """All the policies' rules, sorted by issuer (stable), as istiod merges them."""
    rules = [r for p in policies for r in (p.get("spec") or {}).get("jwtRules") or []]
    return sorted(rules, key=lambda r: str(r.get("issuer", "")))


def translate_jwt_filter(
    policies: Sequence[Obj], jwks: Mapping[str, str]
) -> hcm_pb2.HttpFilter | None:
    """jwks: the keys the control plane fetched, by jwksUri; a URI it has no
    keys for gets FAKE_JWKS, so its tokens fail rather than pass."""
    config = translate_jwt_authn(jwt_rules(policies), jwks)
    if config is None:
        return None
    return hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=pack(config))


def translate_jwt_authn(
    rules: Sequence[Obj], jwks: Mapping[str, str]
) -> config_pb2.JwtAuthentication | None:
    if not rules:
        return None
    out = config_pb2.JwtAuthentication(bypass_cors_preflight=True)
    names = [f"origins-{i}" for i in range(len(rules))]
    for name, rule in zip(names, rules, strict=True):
        out.providers[name].CopyFrom(translate_provider(rule, jwks))
    inner = [_any(_provider_req(n), _missing()) for n in names]
    if len(inner) == 1:
        requires = inner[0]
    else:
        every = config_pb2.JwtRequirement(
            requires_all=config_pb2.JwtRequirementAndList(requirements=inner)
        )
        requires = _any(*[_provider_req(n) for n in names], every)
    rule = out.rules.add(requires=requires)
    rule.match.prefix = "/"
    return out


def _provider_req(name: str) -> config_pb2.JwtRequirement:
    return config_pb2.JwtRequirement(provider_name=name)


def _missing() -> config_pb2.JwtRequirement:
    return config_pb2.JwtRequirement(allow_missing=empty_pb2.Empty())


def _any(*requirements: config_pb2.JwtRequirement) -> config_pb2.JwtRequirement:
    return config_pb2.JwtRequirement(
        requires_any=config_pb2.JwtRequirementOrList(requirements=requirements)
    )


def translate_provider(rule: Obj, jwks: Mapping[str, str]) -> config_pb2.JwtProvider:
    provider = config_pb2.JwtProvider(
        issuer=str(rule.get("issuer", "")),
        audiences=[str(a) for a in rule.get("audiences") or []],
        forward=bool(rule.get("forwardOriginalToken", False)),
        forward_payload_header=str(rule.get("outputPayloadToHeader", "")),
        payload_in_metadata=PAYLOAD_METADATA,
        from_params=[str(p) for p in rule.get("fromParams") or []],
        from_cookies=[str(c) for c in rule.get("fromCookies") or []],
    )
    claims = set(rule.get("spaceDelimitedClaims") or ()) | set(SPACE_DELIMITED_CLAIMS)
    provider.normalize_payload_in_metadata.space_delimited_claims.extend(sorted(claims))
    for header in rule.get("fromHeaders") or []:
        provider.from_headers.add(
            name=str(header["name"]), value_prefix=str(header.get("prefix", ""))
        )
    for claim in rule.get("outputClaimToHeaders") or []:
        provider.claim_to_headers.add(
            header_name=str(claim["header"]), claim_name=str(claim["claim"])
        )
    provider.local_jwks.inline_string = jwks_text(rule, jwks)
    return provider


def jwks_text(rule: Obj, jwks: Mapping[str, str]) -> str:
    """Inline `jwks` wins over `jwksUri`, as in istiod's BuildLocalJwks."""
    inline: Any = rule.get("jwks")
    if inline:
        return str(inline)
    uri = str(rule.get("jwksUri") or "")
    return jwks.get(uri, FAKE_JWKS) if uri else FAKE_JWKS
