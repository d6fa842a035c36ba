"""istioctl analyze's own test grid as the oracle: `pilotfish analyze
--use-kube=false -A -o json` over each input of Istio's
pkg/config/analysis/analyzers/analyzers_test.go whose kinds pilotfish has,
comparing (code, resource) with Istio's expectations for that analyzer.

Istio runs one analyzer per case, so each case runs the case's analyzer
alone over the files as the CLI reads them, compares with Istio's list, and
checks that `pilotfish analyze` (every analyzer) prints each of those
messages. Pods and meshed Deployments become Workloads with their labels (pilotfish's
equivalent; an expected `Deployment ns/name` is then `Workload ns/name`). Cases not claimed are listed with the reason in UNCLAIMED."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilotfish.analysis import ANALYZERS, analyze
from pilotfish.cli.main import main
from pilotfish.cli.manifests import read_documents

# Where tests/api/test_conformance.py finds shared/conformance, and how it is overridden.
INPUTS = (
    Path(
        os.environ.get("PILOTFISH_CONFORMANCE_DIR")
        or Path(__file__).resolve().parents[3] / "shared/conformance"
    )
    / "istio/analyzers"
)

# (case name, input files, Istio analyzer, expected [(code, origin)]) from analyzers_test.go.
CASES: list[tuple[str, list[str], str, list[tuple[str, str]]]] = [
    (
        "deprecation",
        ["deprecation.yaml"],
        "deprecation.FieldAnalyzer",
        [("IST0002", "VirtualService foo/productpage"), ("IST0002", "Sidecar default/no-selector")],
    ),
    (
        "conflicting gateways detect",
        ["conflicting-gateways.yaml"],
        "gateway.ConflictingGatewayAnalyzer",
        [("IST0145", "Gateway alpha"), ("IST0145", "Gateway beta")],
    ),
    (
        "conflicting gateways detect by sub selector",
        ["conflicting-gateways-subSelector.yaml"],
        "gateway.ConflictingGatewayAnalyzer",
        [("IST0145", "Gateway alpha"), ("IST0145", "Gateway beta")],
    ),
    (
        "gateways with different port",
        ["gateway-different-port.yaml"],
        "gateway.ConflictingGatewayAnalyzer",
        [],
    ),
    (
        "conflicting gateways with multiple ports",
        ["conflicting-gateways-multiple-ports.yaml"],
        "gateway.ConflictingGatewayAnalyzer",
        [("IST0145", "Gateway alpha"), ("IST0145", "Gateway beta")],
    ),
    (
        "conflicting gateways: no port",
        ["conflicting-gateways-invalid-port.yaml"],
        "gateway.ConflictingGatewayAnalyzer",
        [],
    ),
    (
        "conflicting gateway with list type",
        ["analyze-list-type.yaml"],
        "gateway.ConflictingGatewayAnalyzer",
        [
            ("IST0145", "Gateway alpha"),
            ("IST0145", "Gateway alpha-l"),
            ("IST0145", "Gateway beta-l"),
        ],
    ),
    (
        "virtualServiceConflictingMeshGatewayHosts",
        ["virtualservice_conflictingmeshgatewayhosts.yaml"],
        "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        [
            ("IST0109", f"VirtualService {n}")
            for n in (
                "team3/ratings",
                "team4/ratings",
                "foo/ratings",
                "bar/ratings",
                "foo/productpage",
                "foo/bogus-productpage",
                "team2/ratings",
            )
        ],
    ),
    (
        "virtualServiceConflictingMeshGatewayHostsWithExportTo",
        ["virtualservice_conflictingmeshgatewayhosts_with_exportto.yaml"],
        "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        [
            ("IST0109", f"VirtualService {n}")
            for n in (
                "foo/productpage",
                "bar/productpage",
                "foo/productpage-c",
                "bar/productpage-c",
                "foo/productpage-d",
                "bar/productpage-d",
            )
        ],
    ),
    (
        "virtualServiceDestinationHosts",
        ["virtualservice_destinationhosts.yaml"],
        "virtualservice.DestinationHostAnalyzer",
        [
            ("IST0101", "VirtualService default/reviews-bogushost"),
            ("IST0101", "VirtualService default/reviews-bogushost"),
            ("IST0101", "VirtualService default/reviews-bookinfo-other"),
            ("IST0101", "VirtualService default/reviews-mirror-bogushost"),
            ("IST0101", "VirtualService default/reviews-bogusport"),
            ("IST0112", "VirtualService default/reviews-2port-missing"),
            ("IST0101", "VirtualService istio-system/cross-namespace-details"),
            ("IST0101", "VirtualService hello/hello-export-to-bogus"),
        ],
    ),
    (
        "virtualServiceDestinationRules",
        ["virtualservice_destinationrules.yaml"],
        "virtualservice.DestinationRuleAnalyzer",
        [
            ("IST0101", "VirtualService default/reviews-bogussubset"),
            ("IST0101", "VirtualService default/reviews-mirror-bogussubset"),
        ],
    ),
    (
        "virtualServiceGateways",
        ["virtualservice_gateways.yaml"],
        "virtualservice.GatewayAnalyzer",
        [
            ("IST0101", "VirtualService httpbin-bogus"),
            ("IST0132", "VirtualService default/cross-test"),
            ("IST0132", "VirtualService httpbin-bogus"),
            ("IST0132", "VirtualService httpbin"),
        ],
    ),
    (
        "virtualServiceJWTClaimRoute",
        ["virtualservice_jwtclaimroute.yaml"],
        "virtualservice.JWTClaimRouteAnalyzer",
        [("IST0149", "VirtualService foo")],
    ),
    *[
        (
            f"host not found in gateway ({name})",
            [name],
            "virtualservice.GatewayAnalyzer",
            [
                ("IST0132", f"VirtualService default/{vs}")
                for vs in (
                    "testing-service-02-test-01",
                    "testing-service-02-test-02",
                    "testing-service-02-test-03",
                    "testing-service-03-test-04",
                )
            ],
        )
        for name in (
            "virtualservice_host_not_found_gateway.yaml",
            "virtualservice_host_not_found_gateway_beta.yaml",
        )
    ],
    *[
        (
            f"host not found in gateway with ns ({name})",
            [name],
            "virtualservice.GatewayAnalyzer",
            [("IST0132", "VirtualService default/testing-service-01-test-01")],
        )
        for name in (
            "virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
            "virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        )
    ],
    (
        "missing Addresses and Protocol in Service Entry",
        ["serviceentry-missing-addresses-protocol.yaml"],
        "serviceentry.ProtocolAddressesAnalyzer",
        [
            ("IST0134", "ServiceEntry default/service-entry-test-03"),
            ("IST0134", "ServiceEntry default/service-entry-test-04"),
            ("IST0134", "ServiceEntry default/service-entry-test-07"),
        ],
    ),
    (
        "ServiceEntry Addresses Required Lowercase Protocol",
        ["serviceentry-address-required-lowercase.yaml"],
        "serviceentry.ProtocolAddressesAnalyzer",
        [("IST0134", "ServiceEntry address-missing-lowercase")],
    ),
    (
        "ServiceEntry Addresses Required Uppercase Protocol",
        ["serviceentry-address-required-uppercase.yaml"],
        "serviceentry.ProtocolAddressesAnalyzer",
        [("IST0134", "ServiceEntry address-missing-uppercase")],
    ),
    (
        "dr no cacert, simple at destination",
        ["destinationrule-simple-destination.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0128", "DestinationRule db-tls")],
    ),
    (
        "dr no cacert, mutual at destination",
        ["destinationrule-mutual-destination.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0128", "DestinationRule db-mtls")],
    ),
    (
        "dr no cacert, simple at port",
        ["destinationrule-simple-port.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0129", "DestinationRule db-tls")],
    ),
    (
        "dr credentialName, destination, no selector",
        ["destinationrule-simple-destination-credentialname.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0128", "DestinationRule db-tls")],
    ),
    (
        "dr credentialName, destination, selector",
        ["destinationrule-simple-destination-credentialname-selector.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [],
    ),
    (
        "dr credentialName, port, no selector",
        ["destinationrule-simple-port-credentialname.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0129", "DestinationRule db-tls")],
    ),
    (
        "dr credentialName, port, selector",
        ["destinationrule-simple-port-credentialname-selector.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [],
    ),
    (
        "dr no cacert, mutual at port",
        ["destinationrule-mutual-port.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0129", "DestinationRule db-mtls")],
    ),
    (
        "dr no cacert, mutual at destination, simple at port",
        ["destinationrule-compound-simple-mutual.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0128", "DestinationRule db-mtls"), ("IST0129", "DestinationRule db-mtls")],
    ),
    (
        "dr no cacert, simple at destination, mutual at port",
        ["destinationrule-compound-mutual-simple.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [("IST0129", "DestinationRule db-mtls"), ("IST0128", "DestinationRule db-mtls")],
    ),
    (
        "dr with both cacerts",
        ["destinationrule-with-ca.yaml"],
        "destinationrule.CaCertificateAnalyzer",
        [],
    ),
    (
        "EnvoyFilterUsesRelativeOperation",
        ["relative-envoy-filter-operation.yaml"],
        "envoyfilter.EnvoyPatchAnalyzer",
        [
            ("IST0151", "EnvoyFilter bookinfo/test-relative-1"),
            ("IST0151", "EnvoyFilter bookinfo/test-relative-2"),
            ("IST0151", "EnvoyFilter bookinfo/test-relative-3"),
            ("IST0155", "EnvoyFilter bookinfo/test-relative-3"),
        ],
    ),
    (
        "EnvoyFilterFilterChainMatch",
        ["envoy-filter-filterchain.yaml"],
        "envoyfilter.EnvoyPatchAnalyzer",
        [],
    ),
    (
        "EnvoyFilterUsesAbsoluteOperation",
        ["absolute-envoy-filter-operation.yaml"],
        "envoyfilter.EnvoyPatchAnalyzer",
        [],
    ),
    (
        "EnvoyFilterUsesReplaceOperation",
        ["envoy-filter-replace-operation.yaml"],
        "envoyfilter.EnvoyPatchAnalyzer",
        [
            ("IST0152", "EnvoyFilter bookinfo/test-replace-1"),
            ("IST0155", "EnvoyFilter bookinfo/test-replace-3"),
            ("IST0151", "EnvoyFilter bookinfo/test-replace-3"),
        ],
    ),
    (
        "EnvoyFilterUsesAddOperation",
        ["envoy-filter-add-operation.yaml"],
        "envoyfilter.EnvoyPatchAnalyzer",
        [
            ("IST0153", "EnvoyFilter bookinfo/test-auth-2"),
            ("IST0153", "EnvoyFilter bookinfo/test-auth-3"),
        ],
    ),
    (
        "EnvoyFilterUsesRemoveOperation",
        ["envoy-filter-remove-operation.yaml"],
        "envoyfilter.EnvoyPatchAnalyzer",
        [
            ("IST0151", "EnvoyFilter bookinfo/test-remove-1"),
            ("IST0154", "EnvoyFilter bookinfo/test-remove-2"),
            ("IST0154", "EnvoyFilter bookinfo/test-remove-3"),
            ("IST0151", "EnvoyFilter bookinfo/test-remove-5"),
        ],
    ),
    (
        "Route Rule no effect on Ingress",
        ["virtualservice_route_rule_no_effects_ingress.yaml"],
        "virtualservice.DestinationHostAnalyzer",
        [("IST0140", "VirtualService default/testing-service-01-test-01")],
    ),
    (
        "DestinationRuleSubsetsNotSelectPods",
        ["destinationrule-subsets-not-select-pods.yaml"],
        "destinationrule.PodNotSelectedAnalyzer",
        [("IST0173", "DestinationRule default/subsets-not-select-pods")],
    ),
    (
        "authorizationpolicies",
        ["authorizationpolicies.yaml"],
        "authz.AuthorizationPoliciesAnalyzer",
        [
            ("IST0127", "AuthorizationPolicy istio-system/meshwide-httpbin-v1"),
            ("IST0127", "AuthorizationPolicy httpbin-empty/httpbin-empty-namespace-wide"),
            ("IST0127", "AuthorizationPolicy httpbin/httpbin-nopods"),
            ("IST0101", "AuthorizationPolicy httpbin/httpbin-bogus-ns"),
            ("IST0101", "AuthorizationPolicy httpbin/httpbin-bogus-ns"),
            ("IST0101", "AuthorizationPolicy httpbin/httpbin-bogus-not-ns"),
            ("IST0101", "AuthorizationPolicy httpbin/httpbin-bogus-not-ns"),
            ("IST0127", "AuthorizationPolicy test-ambient/no-workload"),
        ],
    ),
    *[
        (
            f"{kind.lower()}Selector",
            [f"{kind.lower()}-selector.yaml"],
            f"{kind.lower()}.SelectorAnalyzer",
            [
                ("IST0101", f"{kind} default/maps-to-nonexistent"),
                ("IST0101", f"{kind} other/maps-to-different-ns"),
                *[
                    (code, f"{kind} default/{n}")
                    for n in ("dupe-1", "dupe-2", "overlap-1", "overlap-2")
                ],
            ],
        )
        for kind, code in (("Sidecar", "IST0110"), ("Telemetry", "IST0159"))
    ],
    (
        "serviceMultipleDeployments",
        ["deployment-multi-service.yaml"],
        "deployment.MultiServiceAnalyzer",
        [
            ("IST0116", "Deployment bookinfo/multiple-svc-multiple-prot"),
            ("IST0116", "Deployment bookinfo/multiple-without-port"),
            ("IST0137", "Deployment bookinfo/conflicting-ports"),
        ],
    ),
    (
        "deploymentMultiServicesInDifferentNamespace",
        ["deployment-multi-service-different-ns.yaml"],
        "deployment.MultiServiceAnalyzer",
        [],
    ),
    (
        "serviceWithNoSelector",
        ["deployment-service-no-selector.yaml"],
        "deployment.MultiServiceAnalyzer",
        [],
    ),
    (
        "portNameNotFollowConvention",
        ["service-no-port-name.yaml"],
        "service.PortNameAnalyzer",
        [
            ("IST0118", "Service my-namespace1/my-service1"),
            ("IST0118", "Service my-namespace1/my-service1"),
            ("IST0118", "Service my-namespace2/my-service2"),
        ],
    ),
    ("namedPort", ["service-port-name.yaml"], "service.PortNameAnalyzer", []),
    (
        "unnamedPortInSystemNamespace",
        ["service-no-port-name-system-namespace.yaml"],
        "service.PortNameAnalyzer",
        [],
    ),
    (
        "ExternalNameServiceTypeInvalidPortName",
        ["incorrect-port-name-external-name-service-type.yaml"],
        "service.PortNameAnalyzer",
        [
            ("IST0150", "Service nginx-ns/nginx"),
            ("IST0150", "Service nginx-ns2/nginx-svc2"),
            ("IST0150", "Service nginx-ns3/nginx-svc3"),
        ],
    ),
    (
        "ExternalNameServiceTypeValidPortName",
        ["correct-port-name-external-name-service-type.yaml"],
        "service.PortNameAnalyzer",
        [],
    ),
    (
        "dupmatches",
        ["virtualservice_dupmatches.yaml", "virtualservice_overlappingmatches.yaml"],
        "schema.ValidationAnalyzer.VirtualService",
        [
            ("IST0130", "VirtualService duplicate-match"),
            ("IST0130", "VirtualService foo/sample-foo-cluster01"),
            ("IST0131", "VirtualService almost-duplicate-match"),
            ("IST0131", "VirtualService duplicate-match"),
            ("IST0130", "VirtualService duplicate-tcp-match"),
            ("IST0130", "VirtualService duplicate-empty-tcp"),
            ("IST0131", "VirtualService almost-duplicate-tcp-match"),
            ("IST0131", "VirtualService duplicate-tcp-match"),
            ("IST0130", "VirtualService none/tls-routing"),
            ("IST0131", "VirtualService none/tls-routing-almostmatch"),
            ("IST0131", "VirtualService none/tls-routing"),
            ("IST0131", "VirtualService non-method-get"),
            ("IST0131", "VirtualService overlapping-in-single-match"),
            ("IST0131", "VirtualService overlapping-in-two-matches"),
            ("IST0131", "VirtualService overlapping-mathes-with-different-methods"),
        ],
    ),
    (
        "Analyze invalid telemetry",
        ["telemetry-invalid-provider.yaml"],
        "telemetry.ProdiverAnalyzer",
        [("IST0157", "Telemetry istio-system/mesh-default")],
    ),
    (
        "Analyze disabled telemetry provider",
        ["telemetry-disable-provider.yaml"],
        "telemetry.ProdiverAnalyzer",
        [],
    ),
    (
        "telemetryDefaultSelector",
        ["telemetry-default-selector.yaml"],
        "telemetry.DefaultSelectorAnalyzer",
        [("IST0160", "Telemetry ns2/has-conflict-2"), ("IST0160", "Telemetry ns2/has-conflict-1")],
    ),
]

_K8S = "needs Kubernetes objects pilotfish does not have"
UNCLAIMED: dict[str, str] = {
    "misannoted / alpha": f"{_K8S} (Pods, Deployments, Ingress); annotation analyzers not ported",
    "externalControlPlane* (5 cases)": f"{_K8S} (webhook configurations)",
    "gatewayNoWorkload, gatewayBadPort, gatewayCorrectPort, gatewayCustomIngressGateway* (6), gatewayServiceMatchPod": "IngressGatewayPortAnalyzer matches gateway Pods and their Services; pilotfish gateways are agent-run, not Pods",
    "gatewaySecret, gatewaySecretValidations": "Istio finds the gateway's namespace from its Pods; pilotfish's gateway is agent-run, so gateway.SecretAnalyzer looks in the Gateway's namespace and istio-system (tests/analysis/test_gateway_secrets.py)",
    "istioInjection*, injectionImage*, Detect `image: auto`": "sidecar injection: pilotfish's node agent starts sidecars itself",
    "sidecarDefaultSelector": "IneffectivePolicy (Sidecars in ambient namespaces) is newer than "
    "the message table ported here; pilotfish has no ambient mode",
    "virtualServiceInternalGatewayRef": "ReferencedInternalGateway is newer than the Istio message table ported here",
    "unknown service registry in mesh networks": "MeshNetworks (multicluster) has no pilotfish equivalent",
    "missing Addresses ... with ISTIO_META_DNS_AUTO_ALLOCATE enabled": "MeshConfig files are not read by pilotfish",
    "certificate duplication in Gateway": "GatewayDuplicateCertificate is not ported; the analyzer needs gateway Pods",
    "webook": f"{_K8S} (MutatingWebhookConfiguration)",
    "Application Pod/Container SecurityContext (4 cases)": f"{_K8S} (Pods, Deployments)",
    "Telemetry Lightstep": "MeshConfig extension providers are not read by pilotfish",
    "KubernetesGatewaySelector": "Kubernetes Gateway API kinds are not served by pilotfish",
    "Condition Analyzer": "status conditions are Kubernetes controllers' (and Gateway API kinds), "
    "which pilotfish does not write",
    "DestinationRuleWithFakeHost": "UnknownDestinationRuleHost not ported yet",
    "DestinationRuleSubsetsWithTopologyLabels, DestinationRuleEmptyTopologyLabels": f"{_K8S} (Nodes)",
    "ServiceEntry Addresses Allocated": "MeshConfig files are not read by pilotfish",
}

_ANALYZERS = {a.name: a for a in ANALYZERS}


def _run(path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, str]]:
    assert main(["analyze", "--use-kube=false", "-A", "-o", "json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)  # json output sets no exit code, as istioctl's


def as_pilotfish(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kubernetes' Pods and meshed Deployments as pilotfish's equivalent, a
    Workload with the same labels (every Workload runs with a sidecar, so a
    Deployment Istio would not inject has none); everything else as it is."""
    injected = {
        o["metadata"]["name"]
        for o in objects
        if o.get("kind") == "Namespace"
        and (o["metadata"].get("labels") or {}).get("istio-injection") == "enabled"
    }
    return [w for w in (_workload(o, injected) for o in objects) if w is not None]


def _workload(obj: dict[str, Any], injected: set[str]) -> dict[str, Any] | None:
    meta = obj.get("metadata") or {}
    if obj.get("kind") == "Pod":
        labels = meta.get("labels") or {}
    elif obj.get("kind") == "Deployment":
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        labels = template.get("labels") or {}
        inject = (template.get("annotations") or {}).get("sidecar.istio.io/inject")
        inject = labels.get("sidecar.istio.io/inject", inject)
        if inject == "false" or (inject != "true" and meta.get("namespace") not in injected):
            return None
    else:
        return obj
    return {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": meta,
        "spec": {"labels": labels, "command": ["app"]},
    }


@pytest.mark.parametrize(
    ("name", "files", "analyzer", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_istio_analyzer_case(
    name: str,
    files: list[str],
    analyzer: str,
    expected: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    docs = read_documents([str(INPUTS / f) for f in files])
    objects = as_pilotfish([d.obj for d in docs])
    alone = analyze(objects, (_ANALYZERS[analyzer],))
    assert {m.type.code for m in alone} <= set(_ANALYZERS[analyzer].codes)
    workloads = [(code, origin.replace("Deployment ", "Workload ", 1)) for code, origin in expected]
    assert Counter((m.type.code, m.resource.origin) for m in alone) == Counter(workloads)
    mapped = tmp_path / "input.yaml"
    mapped.write_text(yaml.safe_dump_all(objects))
    printed = [(m["code"], m["origin"], m["message"]) for m in _run(mapped, capsys)]
    assert all((m.type.code, m.resource.origin, m.text) in printed for m in alone)


def test_claimed_analyzers_are_registered_and_unclaimed_ones_have_reasons() -> None:
    assert {c[2] for c in CASES} <= set(_ANALYZERS)
    assert all(reason for reason in UNCLAIMED.values())
