"""Node agents' identities: the certificate a joining agent asks for with a
bootstrap token, and what that certificate then allows.

    GET  /api/v1/namespaces/kube-public/configmaps/cluster-info   anyone: the CA
    POST /apis/certificates.k8s.io/v1/certificatesigningrequests  a node's CSR

cluster-info is kubeadm's: a ConfigMap whose `kubeconfig` names the server
and holds the CA, which a joining agent checks against the hash it was
given (`--ca-cert-hash sha256:...`) before trusting anything else it hears.
A CSR (signerName kubernetes.io/kube-apiserver-client-kubelet, subject
CN=system:node:NAME, O=system:nodes) from a bootstrap token, or from a node
renewing its own, is approved and signed at once, as kube-controller-manager
auto-approves a kubelet's client CSR; the certificate is in the answer's
`status.certificate` (no separate approval or watch).

A node's certificate allows what its agent needs and no more, as
Kubernetes' Node authorizer and NodeRestriction: read Workloads; update the
status of, register and deregister instances of, and mint service-account
tokens for Workloads scheduled to it (`spec.nodeName` it or empty, as the
agent runs those), and for the ingress gateway's account (`--gateway`);
get (by name; no list or watch) the ConfigMaps and Secrets those Workloads'
specs reference (env, envFrom, volumes), as the Node authorizer's graph of a
node's pods to their Secrets; post telemetry; renew its own certificate.
Everything else: 403.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable
from typing import Any

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from pilotfish.agent.gateway import GatewaySpec
from pilotfish.api.errors import BadRequest, Forbidden, Invalid, MethodNotAllowed
from pilotfish.api.gotypes import rfc3339
from pilotfish.api.kinds import registry
from pilotfish.api.workloads import referenced
from pilotfish.ca.authority import CertificateAuthority, CsrError
from pilotfish.ca.identity import DEFAULT_SERVICE_ACCOUNT
from pilotfish.controlplane.api import CLUSTER_INFO, Request, Response, encode
from pilotfish.controlplane.auth import CSR_PATH, NODE_PREFIX, NODES_GROUP, Attributes
from pilotfish.objects import Obj

SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
ALLOWED_USAGES = ("digital signature", "key encipherment", "client auth")  # the kubelet's
NODE_CERT_TTL = datetime.timedelta(days=365)  # kube-controller-manager's signing duration
INSTANCES = "/api/v1/registry/instances"
TELEMETRY = "/v1/traces"
DISCOVERY = ("/version", "/api", "/apis")
WORKLOAD = registry().resolve("Workload")
_GATEWAY = GatewaySpec().identity("")
GATEWAY_ACCOUNT = (_GATEWAY.namespace, _GATEWAY.service_account)
ListWorkloads = Callable[[], list[Obj]]
InstanceWorkload = Callable[[str, str], str | None]  # (namespace, instance) -> its Workload


class NodeAuthorizer:
    """The rules for "system:node:NAME" callers; reads the store's Workloads
    on each call (the agent calls a few times a second at most)."""

    def __init__(self, workloads: ListWorkloads, instance_workload: InstanceWorkload) -> None:
        self._workloads = workloads
        self._instance_workload = instance_workload

    def __repr__(self) -> str:
        return "NodeAuthorizer()"

    def scheduled(self, node: str) -> list[Obj]:
        return [
            w
            for w in self._workloads()
            if (w.get("spec") or {}).get("nodeName") in (None, "", node)
        ]

    def may(self, node: str, a: Attributes) -> bool:
        if a.resource:
            return self._may_resource(node, a)
        if a.verb == "get":
            return a.path in DISCOVERY or _discovery(a.path)
        if a.verb == "post":
            if a.path in (INSTANCES, TELEMETRY, CSR_PATH):
                return True  # the body decides (admit_body)
            return self._may_mint(node, a.path)
        if a.verb == "delete" and a.path.startswith(INSTANCES + "/"):
            namespace, _, name = a.path[len(INSTANCES) + 1 :].partition("/")
            workload = self._instance_workload(namespace, name)
            return workload is None or self._runs(node, namespace, workload)
        return False

    def _may_resource(self, node: str, a: Attributes) -> bool:
        if (a.group, a.resource) == (WORKLOAD.group, WORKLOAD.plural):
            if a.verb in ("get", "list", "watch") and not a.subresource:
                return True
            return (
                a.subresource == "status"
                and a.verb in ("update", "patch", "get")
                and (self._runs(node, a.namespace, a.name))
            )
        if a.group == "" and a.resource in ("configmaps", "secrets") and a.verb == "get":
            wanted = ("ConfigMap" if a.resource == "configmaps" else "Secret", a.name)
            return any(
                _namespace(w) == a.namespace and wanted in referenced(w.get("spec") or {})
                for w in self.scheduled(node)
            )
        return False

    def _may_mint(self, node: str, path: str) -> bool:
        parts = path.strip("/").split("/")
        if len(parts) != 7 or parts[:3] != ["api", "v1", "namespaces"] or parts[6] != "token":
            return False
        namespace, account = parts[3], parts[5]
        if (namespace, account) == GATEWAY_ACCOUNT:
            return True  # `pilotfish node --gateway` runs the ingress gateway on any node
        return parts[4] == "serviceaccounts" and any(
            _namespace(w) == namespace and _account(w) == account for w in self.scheduled(node)
        )

    def _runs(self, node: str, namespace: str, name: str) -> bool:
        return any(
            _namespace(w) == namespace and w["metadata"]["name"] == name
            for w in self.scheduled(node)
        )

    def admit_body(self, node: str, method: str, path: str, body: bytes) -> None:
        """Forbidden unless the body asks for this node's own: an instance of
        a Workload it runs, or its own certificate."""
        if method != "POST" or path not in (INSTANCES, CSR_PATH):
            return
        user = json.dumps(NODE_PREFIX + node)
        if path == CSR_PATH:
            wanted = csr_node(_csr_object(body))
            if wanted != node:
                raise Forbidden(
                    f"User {user} may only request a certificate for itself, not {wanted!r}"
                )
            return
        data = _json_object(body)
        namespace = str(data.get("namespace") or "default")
        workload = str(data.get("workload") or data.get("name") or "")
        if not self._runs(node, namespace, workload):
            raise Forbidden(
                f"User {user} cannot register an instance of workload {namespace}/{workload}: "
                "no Workload of that name is scheduled to this node"
            )


def _discovery(path: str) -> bool:
    parts = path.strip("/").split("/")
    return (parts[0] == "api" and len(parts) <= 2) or (parts[0] == "apis" and len(parts) <= 3)


def _namespace(workload: Obj) -> str:
    return str(workload["metadata"].get("namespace") or "default")


def _account(workload: Obj) -> str:
    return str((workload.get("spec") or {}).get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest("the request body must be an object")
    return data


def _csr_object(body: bytes) -> x509.CertificateSigningRequest:
    """The PEM CSR in a CertificateSigningRequest's `spec.request` (base64)."""
    data = _json_object(body)
    if data.get("kind") != "CertificateSigningRequest":
        raise BadRequest(f"the body's kind is {data.get('kind')!r}, not CertificateSigningRequest")
    spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    if spec.get("signerName") != SIGNER:
        raise Invalid(
            f"spec.signerName: Unsupported value: {spec.get('signerName')!r}: "
            f'supported values: "{SIGNER}"'
        )
    usages = spec.get("usages") or []
    wrong = [u for u in usages if u not in ALLOWED_USAGES] if isinstance(usages, list) else usages
    if wrong or "client auth" not in usages:
        raise Invalid(
            f"spec.usages: Unsupported value: {json.dumps(wrong or usages)}: {SIGNER} "
            f'signs "client auth" with "digital signature" and "key encipherment" only'
        )
    try:
        return x509.load_pem_x509_csr(base64.b64decode(str(spec.get("request", "")), validate=True))
    except ValueError as e:
        raise Invalid(
            f"spec.request: Invalid value: not a base64 PEM certificate request: {e}"
        ) from e


def csr_node(csr: x509.CertificateSigningRequest) -> str:
    """The node a kubelet-style CSR is for; Invalid unless its subject is
    exactly CN=system:node:NAME, O=system:nodes, with no SAN."""
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    organizations = [
        str(o.value) for o in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    ]
    common = str(names[0].value) if len(names) == 1 else ""
    node = common.removeprefix(NODE_PREFIX)
    if node == common or not node or organizations != [NODES_GROUP] or len(csr.subject) != 2:
        raise Invalid(
            'spec.request: Invalid value: the subject must be "CN=system:node:NAME, '
            f'O={NODES_GROUP}" and nothing else, got "{csr.subject.rfc4514_string()}"'
        )
    try:
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return node
    raise Invalid("spec.request: Invalid value: a node client certificate names no SAN")


class NodeCertificates:
    """An `Api` extension: cluster-info and node CSRs."""

    def __init__(self, authority: CertificateAuthority, server: Callable[[], str]) -> None:
        self.authority = authority
        self._server = server

    def __repr__(self) -> str:
        return f"NodeCertificates({self.authority!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path == CLUSTER_INFO:
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{request.method} is not supported on {path}")
            return Response(200, encode(cluster_info(self.authority.root_pem(), self._server())))
        if path != CSR_PATH:
            return None
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} is not supported on {path}")
        return Response(201, encode(self.sign(request.body)))

    def sign(self, body: bytes, now: datetime.datetime | None = None) -> Obj:
        csr = _csr_object(body)
        node = csr_node(csr)
        now = now or datetime.datetime.now(datetime.UTC)
        try:
            chain = self.authority.client(csr, NODE_CERT_TTL, now)
        except CsrError as e:
            raise Invalid(f"spec.request: Invalid value: {e}") from e
        return csr_answer(_json_object(body), node, chain[0], now)


def csr_answer(data: Obj, node: str, certificate: str, now: datetime.datetime) -> Obj:
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    name = str((meta or {}).get("name") or f"node-csr-{node}")
    return {
        "kind": "CertificateSigningRequest",
        "apiVersion": "certificates.k8s.io/v1",
        "metadata": {"name": name, "creationTimestamp": rfc3339(now.timestamp())},
        "spec": {**data.get("spec", {}), "username": NODE_PREFIX + node},
        "status": {
            "conditions": [
                {
                    "type": "Approved",
                    "status": "True",
                    "reason": "AutoApproved",
                    "message": "Auto approving kubelet client certificate after "
                    "SubjectAccessReview.",
                    "lastUpdateTime": rfc3339(now.timestamp()),
                }
            ],
            "certificate": base64.b64encode(certificate.encode()).decode(),
        },
    }


def cluster_info(root_pem: str, server: str) -> Obj:
    """kubeadm's kube-public/cluster-info: a kubeconfig with the CA, no credentials."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "",
                "cluster": {
                    "certificate-authority-data": base64.b64encode(root_pem.encode()).decode(),
                    "server": server,
                },
            }
        ],
        "contexts": [],
        "users": [],
    }
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": yaml.safe_dump(kubeconfig, sort_keys=False)},
    }
