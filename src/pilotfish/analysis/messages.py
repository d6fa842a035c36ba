"""Istio's analysis messages: codes, levels and templates (from Istio's
`pkg/config/analysis/msg/messages.yaml`), and pilotfish's own PF codes.

Templates keep Istio's Go verbs (`%s %v %q %d %t`) so the words stay exactly
Istio's; `render` formats arguments the way Go's fmt does for them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pilotfish.analysis.config import name_of, namespace_of
from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import registry
from pilotfish.objects import Obj

LEVELS = ("Info", "Warning", "Error")  # worst last, as diag.Level orders them
DOC_URL = "https://istio.io/latest/docs/reference/config/analysis"


@dataclass(frozen=True)
class MessageType:
    name: str
    code: str
    level: str
    template: str


_TYPES = (
    MessageType("InternalError", "IST0001", "Error", "Internal error: %v"),
    MessageType("Deprecated", "IST0002", "Warning", "Deprecated: %s"),
    MessageType("ReferencedResourceNotFound", "IST0101", "Error", "Referenced %s not found: %q"),
    MessageType("SchemaValidationError", "IST0106", "Error", "Schema validation error: %v"),
    MessageType(
        "MisplacedAnnotation",
        "IST0107",
        "Warning",
        "Misplaced annotation: %s can only be applied to %s",
    ),
    MessageType("UnknownAnnotation", "IST0108", "Warning", "Unknown annotation: %s"),
    MessageType(
        "ConflictingMeshGatewayVirtualServiceHosts",
        "IST0109",
        "Error",
        "The VirtualServices %s associated with mesh gateway define the same host %s which can "
        "lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices "
        "into a single resource.",
    ),
    MessageType(
        "ConflictingSidecarWorkloadSelectors",
        "IST0110",
        "Error",
        "The Sidecars %v in namespace %q select the same workload pod %q, which can lead to "
        "undefined behavior.",
    ),
    MessageType(
        "MultipleSidecarsWithoutWorkloadSelectors",
        "IST0111",
        "Error",
        "The Sidecars %v in namespace %q have no workload selector, which can lead to undefined "
        "behavior.",
    ),
    MessageType(
        "VirtualServiceDestinationPortSelectorRequired",
        "IST0112",
        "Error",
        "This VirtualService routes to a service %q that exposes multiple ports %v. Specifying a "
        "port in the destination is required to disambiguate.",
    ),
    MessageType(
        "DeploymentAssociatedToMultipleServices",
        "IST0116",
        "Warning",
        "This deployment %s is associated with multiple services using port %d but different "
        "protocols: %v",
    ),
    MessageType(
        "PortNameIsNotUnderNamingConvention",
        "IST0118",
        "Info",
        "Port name %s (port: %d, targetPort: %s) doesn't follow the naming convention of "
        "Istio port.",
    ),
    MessageType(
        "InvalidRegexp", "IST0122", "Warning", "Field %q regular expression invalid: %q (%s)"
    ),
    MessageType(
        "NoMatchingWorkloadsFound",
        "IST0127",
        "Warning",
        "No matching workloads for this resource with the following labels: %s",
    ),
    MessageType(
        "NoServerCertificateVerificationDestinationLevel",
        "IST0128",
        "Warning",
        "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set "
        "to validate server identity for host: %s",
    ),
    MessageType(
        "NoServerCertificateVerificationPortLevel",
        "IST0129",
        "Warning",
        "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set "
        "to validate server identity for host: %s at port %s",
    ),
    MessageType(
        "VirtualServiceUnreachableRule",
        "IST0130",
        "Warning",
        "VirtualService rule %v not used (%s).",
    ),
    MessageType(
        "VirtualServiceIneffectiveMatch",
        "IST0131",
        "Info",
        "VirtualService rule %v match %v is not used (duplicate/overlapping match in rule %v).",
    ),
    MessageType(
        "VirtualServiceHostNotFoundInGateway",
        "IST0132",
        "Warning",
        "one or more host %v defined in VirtualService %s not found in Gateway %s.",
    ),
    MessageType(
        "ServiceEntryAddressesRequired",
        "IST0134",
        "Warning",
        "ServiceEntry addresses are required for this protocol.",
    ),
    MessageType(
        "DeploymentConflictingPorts",
        "IST0137",
        "Warning",
        "This deployment %s is associated with multiple services %v using targetPort %q but "
        "different ports: %v.",
    ),
    MessageType(
        "GatewayDuplicateCertificate",
        "IST0138",
        "Warning",
        "Duplicate certificate in multiple gateways %v may cause 404s if clients re-use HTTP2 "
        "connections.",
    ),
    MessageType(
        "IngressRouteRulesNotAffected",
        "IST0140",
        "Warning",
        "Subset in virtual service %s has no effect on ingress gateway %s requests",
    ),
    MessageType(
        "ConflictingGateways",
        "IST0145",
        "Error",
        "Conflict with gateways %s (workload selector %s, port %s, hosts %v).",
    ),
    MessageType(
        "JwtClaimBasedRoutingWithoutRequestAuthN",
        "IST0149",
        "Error",
        "The virtual service uses the JWT claim based routing (key: %s) but found no request "
        "authentication for the gateway (%s) pod (%s). The request authentication must first be "
        "applied for the gateway pods to validate the JWT token and make the claims available "
        "for routing.",
    ),
    MessageType(
        "ExternalNameServiceTypeInvalidPortName",
        "IST0150",
        "Warning",
        "Port name for ExternalName service is invalid. Proxy may prevent tcp named ports and "
        "unmatched traffic for ports serving TCP protocol from being forwarded correctly",
    ),
    MessageType(
        "EnvoyFilterUsesRelativeOperation",
        "IST0151",
        "Warning",
        "This EnvoyFilter does not have a priority and has a relative patch operation set which "
        "can cause the EnvoyFilter not to be applied. Using the INSERT_FIRST of ADD option or "
        "setting the priority may help in ensuring the EnvoyFilter is applied correctly.",
    ),
    MessageType(
        "EnvoyFilterUsesReplaceOperationIncorrectly",
        "IST0152",
        "Error",
        "The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.",
    ),
    MessageType(
        "EnvoyFilterUsesAddOperationIncorrectly",
        "IST0153",
        "Error",
        "The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or "
        "HTTP_ROUTE.",
    ),
    MessageType(
        "EnvoyFilterUsesRemoveOperationIncorrectly",
        "IST0154",
        "Error",
        "The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or "
        "HTTP_ROUTE.",
    ),
    MessageType(
        "EnvoyFilterUsesRelativeOperationWithProxyVersion",
        "IST0155",
        "Warning",
        "This EnvoyFilter does not have a priority and has a relative patch operation "
        "(NSTERT_BEFORE/AFTER, REPLACE, MERGE, DELETE) and proxyVersion set which can cause the "
        "EnvoyFilter not to be applied during an upgrade. Using the INSERT_FIRST or ADD option or "
        "setting the priority may help in ensuring the EnvoyFilter is applied correctly.",
    ),
    MessageType(
        "InvalidTelemetryProvider",
        "IST0157",
        "Warning",
        "The Telemetry %v in namespace %q with empty providers will be ignored.",
    ),
    MessageType(
        "ConflictingTelemetryWorkloadSelectors",
        "IST0159",
        "Error",
        "The Telemetries %v in namespace %q select the same workload pod %q, which can lead to "
        "undefined behavior.",
    ),
    MessageType(
        "MultipleTelemetriesWithoutWorkloadSelectors",
        "IST0160",
        "Error",
        "The Telemetries %v in namespace %q have no workload selector, which can lead to "
        "undefined behavior.",
    ),
    MessageType(
        "InvalidGatewayCredential",
        "IST0161",
        "Error",
        "The credential referenced by the Gateway %s in namespace %s is invalid, which can "
        "cause the traffic not to work as expected.",
    ),
    MessageType(
        "DestinationRuleSubsetNotSelectPods",
        "IST0173",
        "Error",
        "The Subset %s defined in the DestinationRule does not select any pods. Which may lead "
        "to 503 UH (NoHealthyUpstream).",
    ),
    # pilotfish's own: config that is stored and served but not acted on.
    MessageType(
        "NotEnforced",
        "PF0001",
        "Warning",
        "%s is stored but not enforced by pilotfish: %s",
    ),
    MessageType(
        "WorkloadPortWithoutService",
        "PF0002",
        "Warning",
        "Workload port %s (%d) is the target of no port of a Service selecting this Workload, "
        "so nothing in the mesh can call it.",
    ),
    MessageType(
        "JwtRuleWithoutKeys",
        "PF0003",
        "Warning",
        "jwtRules[%d] of issuer %q has neither jwks nor jwksUri: its tokens fail (keys are "
        "not discovered from the issuer's OpenID configuration).",
    ),
    MessageType(
        "JwksUnavailable",
        "PF0004",
        "Warning",
        "The control plane could not get this policy's keys: %s",
    ),
    MessageType("TargetRefsUnsupported", "PF0005", "Warning", "%s"),
    MessageType(
        "FailoverWithoutOutlierDetection",
        "PF0006",
        "Warning",
        "%s: outlier detection policy must be provided for failover",
    ),
    MessageType(
        "UpstreamServiceNotFound",
        "PF0007",
        "Warning",
        "upstreams[%d]: no service %q with port %d: its sidecars do not listen on %s until one "
        "exists",
    ),
)
TYPES: dict[str, MessageType] = {t.name: t for t in _TYPES}
CODES: dict[str, MessageType] = {t.code: t for t in _TYPES}

_VERB = re.compile(r"%[svqdt]")


def render(template: str, args: Iterable[Any]) -> str:
    """The template with each Go verb replaced by the next argument, as fmt prints it."""
    values = iter(args)
    return _VERB.sub(lambda m: _go(m.group(0), next(values)), template)


def _go(verb: str, value: Any) -> str:
    if verb == "%q":
        return json.dumps(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True, order=True)
class Resource:
    """What a message is about: `Kind namespace/name` (or `Kind name` without a namespace)."""

    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: Obj) -> Resource:
        return cls(str(obj.get("kind", "")), namespace_of(obj), name_of(obj))

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def origin(self) -> str:
        return f"{self.kind} {self.full_name}"


@dataclass(frozen=True)
class Message:
    type: MessageType
    resource: Resource
    text: str

    def __str__(self) -> str:
        return f"{self.type.level} [{self.type.code}] ({self.resource.origin}) {self.text}"

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.resource.origin, self.type.code, self.text, self.resource.kind)

    def to_dict(self) -> Obj:
        """As `istioctl analyze -o json` prints one message."""
        url = DOC_URL + f"/{self.type.code.lower()}/" if self.type.code.startswith("IST") else ""
        out: Obj = {
            "code": self.type.code,
            "documentationUrl": url,
            "level": self.type.level,
            "message": self.text,
            "origin": self.resource.origin,
        }
        return out

    def to_status(self) -> Obj:
        """One entry of an object's `status.validationMessages`, as istiod writes it."""
        return {
            "documentationUrl": self.to_dict()["documentationUrl"],
            "level": self.type.level.upper(),
            "type": {"code": self.type.code, "name": self.type.name},
        }


def new(name: str, obj: Obj, *args: Any) -> Message:
    """A message of the type `name` about `obj`."""
    kind = TYPES[name]
    return Message(kind, Resource.of(obj), render(kind.template, args))


def sorted_messages(messages: Iterable[Message]) -> list[Message]:
    """Sorted by resource, then code, without duplicates, as istioctl prints them."""
    return sorted(dict.fromkeys(messages), key=lambda m: m.sort_key)


def level_at_least(level: str, threshold: str) -> bool:
    return LEVELS.index(level) >= LEVELS.index(threshold)


def kind_known(obj: Obj) -> bool:
    try:
        registry().for_object(obj)
    except ApiError:
        return False
    return True
