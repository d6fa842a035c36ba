"""Analyzers of Gateways (Istio's analyzers/gateway)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    hosts_match,
    items,
    labels_match,
    labels_text,
    mapping,
    name_of,
    namespace_of,
    spec,
    workloads,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.ca.credentials import check_bundle, check_certificate_and_key
from pilotfish.model.hosts import ROOT_NAMESPACE
from pilotfish.objects import Obj
from pilotfish.translate.secrets import CA_KEYS, CA_SUFFIX, CERT_KEYS, secret_value

Listener = tuple[Obj, int, str]  # gateway, port number, host


def conflicting_gateways(config: Config) -> list[Message]:
    """IST0145: two Gateways on the same workloads and port claim the same host,
    so which one serves it is undefined. Same workloads: equal selectors, or
    selectors one workload matches both of."""
    gateways = config.of(NETWORKING, "Gateway")
    listeners = _listeners(gateways)
    labels = [mapping(spec(w).get("labels")) for w in workloads(config)]
    out = []
    for gateway in gateways:
        mine = [entry for entry in listeners if entry[0] is gateway]
        for _, port, host in mine:
            others = sorted(
                {
                    name_of(other)
                    for other, p, h in listeners
                    if other is not gateway
                    and p == port
                    and hosts_match(h, host)
                    and _same_workloads(gateway, other, labels)
                }
            )
            if others:
                hosts = [h for _, p, h in mine if p == port]
                selector = labels_text(_selector(gateway))
                out.append(
                    new(
                        "ConflictingGateways", gateway, ",".join(others), selector, str(port), hosts
                    )
                )
                break
    return out


def _selector(gateway: Obj) -> Obj:
    return mapping(spec(gateway).get("selector"))


def _same_workloads(a: Obj, b: Obj, labels: list[Obj]) -> bool:
    mine, theirs = _selector(a), _selector(b)
    if mine == theirs:
        return True
    return any(labels_match(mine, have) and labels_match(theirs, have) for have in labels)


def _listeners(gateways: list[Obj]) -> list[Listener]:
    found = []
    for gateway in gateways:
        for server in items(spec(gateway).get("servers")):
            port = mapping(mapping(server).get("port")).get("number")
            if not isinstance(port, int):
                continue
            for host in items(mapping(server).get("hosts")):
                found.append((gateway, port, str(host).rpartition("/")[2]))
    return found


def credentials(config: Config) -> list[Message]:
    """Istio's gateway SecretAnalyzer: a server's credentialName must name a
    Secret where the gateway runs (IST0101), holding a certificate and key
    that can serve, and for MUTUAL a CA bundle (IST0161). Where it runs: the
    namespace of the workloads its selector picks, else its own namespace or
    istio-system, where pilotfish's ingress gateway runs."""
    out = []
    for gateway in config.of(NETWORKING, "Gateway"):
        namespaces = _gateway_namespaces(config, gateway)
        for server in items(spec(gateway).get("servers")):
            tls = mapping(mapping(server).get("tls"))
            name = str(tls.get("credentialName") or "")
            if not name:
                continue
            found = next(
                (s for ns in namespaces if (s := config.find("", "Secret", ns, name))), None
            )
            if found is None:
                out.append(new("ReferencedResourceNotFound", gateway, "credentialName", name))
                continue
            mutual = str(tls.get("mode")) in ("MUTUAL", "OPTIONAL_MUTUAL")
            if not _serves(config, found, mutual):
                ns = namespace_of(found)
                out.append(new("InvalidGatewayCredential", gateway, name_of(gateway), ns))
    return out


def _gateway_namespaces(config: Config, gateway: Obj) -> list[str]:
    selector = _selector(gateway)
    picked = sorted(
        {
            namespace_of(w)
            for w in workloads(config)
            if selector and labels_match(selector, mapping(spec(w).get("labels")))
        }
    )
    return picked or [namespace_of(gateway), ROOT_NAMESPACE]


def _serves(config: Config, secret: Obj, mutual: bool) -> bool:
    """A certificate and its key, valid now; and, for MUTUAL, a CA bundle in
    the Secret or its NAME-cacert companion (as the SDS server finds it)."""
    pair = next(
        (
            (c, k)
            for cert, key in CERT_KEYS
            if (c := secret_value(secret, (cert,))) and (k := secret_value(secret, (key,)))
        ),
        None,
    )
    companion = config.find("", "Secret", namespace_of(secret), name_of(secret) + CA_SUFFIX)
    roots = secret_value(companion, CA_KEYS) or secret_value(secret, CA_KEYS)
    try:
        if pair is None:
            return False
        check_certificate_and_key(*pair)
        if mutual:
            check_bundle(roots or b"")
    except ValueError:
        return False
    return True
