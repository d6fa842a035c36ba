"""RequestAuthentication rules whose tokens cannot pass: no key source, or
keys the control plane could not get (its Ready condition, once it has tried).
pilotfish's own codes: istiod only logs these."""

from __future__ import annotations

from pilotfish.analysis.config import Config, items, mapping, spec
from pilotfish.analysis.messages import Message, new

SECURITY = "security.istio.io"
TARGET_REFS_IGNORED = (
    "targetRefs attaches a policy to a Kubernetes Gateway API resource, which "
    "pilotfish does not have: this policy applies to no workload; use selector"
)


def jwt_keys(config: Config) -> list[Message]:
    """PF0003: a rule with neither jwks nor jwksUri; PF0004: keys unavailable;
    PF0005: targetRefs, which select nothing here."""
    out = []
    for policy in config.of(SECURITY, "RequestAuthentication"):
        if spec(policy).get("targetRef") or spec(policy).get("targetRefs"):
            out.append(new("TargetRefsUnsupported", policy, TARGET_REFS_IGNORED))
        for i, rule in enumerate(mapping(r) for r in items(spec(policy).get("jwtRules"))):
            if not rule.get("jwks") and not rule.get("jwksUri"):
                out.append(new("JwtRuleWithoutKeys", policy, i, rule.get("issuer", "")))
        for condition in map(mapping, items(mapping(policy.get("status")).get("conditions"))):
            if condition.get("type") == "Ready" and condition.get("reason") == "JwksUnavailable":
                out.append(new("JwksUnavailable", policy, condition.get("message", "")))
    return out
