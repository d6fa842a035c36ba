"""Istio's `istioctl analyze` checks for pilotfish's kinds, and pilotfish's own.

Pure: `analyze(objects)` takes every object to consider (live state, files, or
files laid over live state: the caller decides) and returns sorted messages.
Objects that fail validation get IST0106 and still go through the other
analyzers (as in istioctl, where schema validation is one analyzer among
others), so every analyzer reads fields defensively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pilotfish.analysis import (
    authn,
    authz,
    deprecation,
    destinationrule,
    envoyfilter,
    gateway,
    matches,
    selectors,
    service,
    serviceentry,
    telemetry,
    unenforced,
    virtualservice,
    workload,
)
from pilotfish.analysis.config import Config, mapping, meta, name_of, namespace_of
from pilotfish.analysis.messages import Message, Resource, kind_known, sorted_messages
from pilotfish.analysis.schema import schema_errors
from pilotfish.api.kinds import Kind, registry
from pilotfish.objects import Obj


@dataclass(frozen=True)
class Analyzer:
    name: str  # Istio's analyzer name, or pilotfish's own
    run: Callable[[Config], list[Message]]
    codes: tuple[str, ...]

    @property
    def description(self) -> str:
        """The first paragraph of the function's docstring, on one line."""
        return " ".join((self.run.__doc__ or "").strip().split("\n\n")[0].split())


SCHEMA = Analyzer("schema.ValidationAnalyzer", schema_errors, ("IST0106",))
ANALYZERS: tuple[Analyzer, ...] = (
    SCHEMA,
    Analyzer("pilotfish.WorkloadPortAnalyzer", workload.ports_without_service, ("PF0002",)),
    Analyzer("pilotfish.UpstreamAnalyzer", workload.upstreams_without_service, ("PF0007",)),
    Analyzer("service.PortNameAnalyzer", service.port_names, ("IST0118", "IST0150")),
    Analyzer("authz.AuthorizationPoliciesAnalyzer", authz.policies, ("IST0101", "IST0127")),
    Analyzer("pilotfish.JwtKeysAnalyzer", authn.jwt_keys, ("PF0003", "PF0004", "PF0005")),
    Analyzer("deprecation.FieldAnalyzer", deprecation.fields, ("IST0002",)),
    Analyzer(
        "destinationrule.CaCertificateAnalyzer",
        destinationrule.ca_certificates,
        ("IST0128", "IST0129"),
    ),
    Analyzer("pilotfish.LocalityFailoverAnalyzer", destinationrule.locality_failover, ("PF0006",)),
    Analyzer(
        "destinationrule.PodNotSelectedAnalyzer",
        destinationrule.subsets_select_workloads,
        ("IST0173",),
    ),
    Analyzer(
        "envoyfilter.EnvoyPatchAnalyzer",
        envoyfilter.patches,
        ("IST0151", "IST0152", "IST0153", "IST0154", "IST0155"),
    ),
    Analyzer("gateway.ConflictingGatewayAnalyzer", gateway.conflicting_gateways, ("IST0145",)),
    Analyzer("gateway.SecretAnalyzer", gateway.credentials, ("IST0101", "IST0161")),
    Analyzer(
        "serviceentry.ProtocolAddressesAnalyzer", serviceentry.addresses_required, ("IST0134",)
    ),
    Analyzer("sidecar.SelectorAnalyzer", selectors.sidecars, ("IST0101", "IST0110", "IST0111")),
    Analyzer("telemetry.SelectorAnalyzer", selectors.telemetry_selectors, ("IST0101", "IST0159")),
    Analyzer("telemetry.ProdiverAnalyzer", telemetry.providers, ("IST0157",)),
    Analyzer("pilotfish.MetricOverridesAnalyzer", telemetry.metric_overrides, ("PF0001",)),
    Analyzer("telemetry.DefaultSelectorAnalyzer", selectors.telemetry_namespace_wide, ("IST0160",)),
    Analyzer(
        "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        virtualservice.conflicting_mesh_gateway_hosts,
        ("IST0109",),
    ),
    Analyzer(
        "virtualservice.DestinationHostAnalyzer",
        virtualservice.destination_hosts,
        ("IST0101", "IST0112", "IST0140"),
    ),
    Analyzer(
        "virtualservice.DestinationRuleAnalyzer", virtualservice.destination_rules, ("IST0101",)
    ),
    Analyzer("virtualservice.GatewayAnalyzer", virtualservice.gateways, ("IST0101", "IST0132")),
    Analyzer("virtualservice.JWTClaimRouteAnalyzer", virtualservice.jwt_claim_routes, ("IST0149",)),
    Analyzer(
        "schema.ValidationAnalyzer.VirtualService",
        matches.unreachable_rules,
        ("IST0130", "IST0131"),
    ),
    Analyzer(
        "deployment.MultiServiceAnalyzer", workload.service_association, ("IST0116", "IST0137")
    ),
    Analyzer("pilotfish.UnenforcedAnalyzer", unenforced.unenforced, ("PF0001",)),
)


def analyze(
    objects: list[Obj], analyzers: tuple[Analyzer, ...] = ANALYZERS, *, stored: bool = False
) -> list[Message]:
    """Every message about `objects`, sorted; objects of kinds pilotfish does
    not serve are skipped, as istioctl skips kinds it has no schema for.
    `stored`: the objects come from the store, so they were validated there."""
    config = Config([o for o in objects if kind_known(o)])
    found: list[Message] = []
    for analyzer in analyzers:
        if not (stored and analyzer is SCHEMA):
            found += analyzer.run(config)
    quiet = _suppressed_by_annotation(config)
    return sorted_messages(
        m for m in found if not ({"*", m.type.code} & quiet.get(m.resource, set()))
    )


SUPPRESS_ANNOTATION = "galley.istio.io/analyze-suppress"


def _suppressed_by_annotation(config: Config) -> dict[Resource, set[str]]:
    """Istio's `galley.istio.io/analyze-suppress: IST0108,IST0103` (or `*`) on
    a resource silences those codes about it."""
    quiet = {}
    for obj in config.all():
        codes = str(mapping(meta(obj).get("annotations")).get(SUPPRESS_ANNOTATION) or "")
        if codes:
            quiet[Resource.of(obj)] = {c.strip() for c in codes.split(",")}
    return quiet


def about(messages: list[Message], obj: Obj) -> list[Message]:
    """The messages about one object."""
    wanted = Resource.of(obj)
    return [m for m in messages if m.resource == wanted]


Lookup = Callable[[str, str, "str | None"], list[Obj]]
_NOT_CONFIG = {("", "Event"), ("", "ConfigMap")}


def config_kinds() -> list[Kind]:
    """The kinds analysis reads: records and payloads like Events are not,
    but Secrets are, since a Gateway's credentialName names one (no message
    ever shows what a Secret holds)."""
    return [k for k in registry() if (k.group, k.kind) not in _NOT_CONFIG]


def warnings_for(obj: Obj, lookup: Lookup) -> list[str]:
    """What `apply` warns about one object just written, given the stored
    objects `lookup(group, kind, None)` returns (every namespace): the
    messages about it, analyzed with the live state it joins."""
    key = _key(obj)
    objects = [obj]
    for kind in config_kinds():
        objects += [o for o in lookup(kind.group, kind.kind, None) if _key(o) != key]
    return [str(m) for m in about(analyze(objects, stored=True), obj)]


def _key(obj: Obj) -> tuple[str, str, str]:
    return str(obj.get("kind", "")), namespace_of(obj), name_of(obj)


__all__ = [
    "ANALYZERS",
    "Analyzer",
    "Lookup",
    "Message",
    "about",
    "analyze",
    "config_kinds",
    "warnings_for",
]
