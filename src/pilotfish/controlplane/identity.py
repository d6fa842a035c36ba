"""The control plane's CA, wired to the store: which CA (self-signed in the
data directory, or plugged in with --cacerts), the trust domain (--trust-domain,
else the mesh config's `trustDomain`, else cluster.local), which service
accounts the Workloads run as (what the node agent may ask for), and the
service account TokenRequest endpoint:

    POST /api/v1/namespaces/NS/serviceaccounts/SA/token   a token bound to NS/SA

as Kubernetes' (the body a TokenRequest, `spec.expirationSeconds` at least
600, 3600 by default); it is a write, so it needs the admin token.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pilotfish.api.errors import BadRequest, Invalid, MethodNotAllowed
from pilotfish.api.gotypes import parse_duration_ns, rfc3339
from pilotfish.api.kinds import registry
from pilotfish.ca import tokens
from pilotfish.ca.authority import DEFAULT_WORKLOAD_TTL, MAX_WORKLOAD_TTL
from pilotfish.ca.authorize import CsrAuthorizer
from pilotfish.ca.cacerts import CaError, load_cacerts, self_signed
from pilotfish.ca.identity import (
    DEFAULT_SERVICE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
    IdentityError,
    SpiffeId,
    check_trust_domain,
)
from pilotfish.ca.service import CertificateService
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.model.snapshot import MESH_CONFIG
from pilotfish.objects import Obj
from pilotfish.store.resources import ResourceStore


@dataclass(frozen=True)
class CaOptions:
    trust_domain: str | None = None  # None: the mesh config's, else cluster.local
    cacerts: Path | None = None  # a plugged-in CA's directory
    workload_cert_ttl: datetime.timedelta = DEFAULT_WORKLOAD_TTL


def open_ca(
    store: ResourceStore,
    data_dir: Path,
    admin_token: str,
    service_tokens: tokens.ServiceAccountTokens,
    options: CaOptions,
) -> CertificateService:
    """The CA service, its files checked; CaError says what is wrong."""
    domain = options.trust_domain or mesh_trust_domain(store) or DEFAULT_TRUST_DOMAIN
    try:
        check_trust_domain(domain)
    except IdentityError as e:
        raise CaError(f"--trust-domain: {e}") from e
    if not datetime.timedelta(seconds=1) <= options.workload_cert_ttl <= MAX_WORKLOAD_TTL:
        raise CaError(
            f"--workload-cert-ttl must be between 1s and {int(MAX_WORKLOAD_TTL.total_seconds())}s"
        )
    if options.cacerts is not None:
        authority = load_cacerts(options.cacerts, domain)
    else:
        authority = self_signed(data_dir, domain)
    authority = dataclasses.replace(authority, default_ttl=options.workload_cert_ttl)
    authorizer = CsrAuthorizer(admin_token, service_tokens, lambda ns: workload_accounts(store, ns))
    return CertificateService(authority, authorizer)


def workload_accounts(store: ResourceStore, namespace: str) -> set[str]:
    """The service accounts the Workloads of `namespace` run as."""
    kind = registry().resolve("Workload")
    items, _ = store.list(kind.group, kind.kind, namespace)
    return {
        (w.get("spec") or {}).get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT for w in items
    }


def mesh_trust_domain(store: ResourceStore) -> str | None:
    """`trustDomain` of the mesh config, if there is one (ConfigMap
    istio-system/istio, key `mesh`, as Istio keeps it)."""
    namespace, name = MESH_CONFIG
    items, _ = store.list("", "ConfigMap", namespace)
    for item in items:
        if item["metadata"]["name"] == name:
            try:
                mesh = yaml.safe_load((item.get("data") or {}).get("mesh") or "") or {}
            except yaml.YAMLError as e:
                raise CaError(f"ConfigMap {namespace}/{name}: key mesh is not YAML: {e}") from e
            domain = mesh.get("trustDomain") if isinstance(mesh, dict) else None
            return str(domain) if domain else None
    return None


class TokenApi:
    """An `Api` extension: the TokenRequest subresource of service accounts."""

    def __init__(self, service_tokens: tokens.ServiceAccountTokens) -> None:
        self.tokens = service_tokens

    def __repr__(self) -> str:
        return "TokenApi()"

    def __call__(self, request: Request, path: str) -> Response | None:
        parts = path.strip("/").split("/")
        if len(parts) != 7 or parts[:3] != ["api", "v1", "namespaces"]:
            return None
        if parts[4] != "serviceaccounts" or parts[6] != "token":
            return None
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} is not supported on {path}")
        namespace, account = parts[3], parts[5]
        try:
            SpiffeId.of(DEFAULT_TRUST_DOMAIN, namespace, account)
        except IdentityError as e:
            raise BadRequest(str(e)) from e
        seconds = _expiration(request.body)
        now = time.time()
        token = self.tokens.mint(namespace, account, seconds, now)
        return Response(201, encode(_token_request(namespace, account, seconds, token, now)))


def _expiration(body: bytes) -> int:
    try:
        data = json.loads(body or b"{}")
    except ValueError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    spec = (data or {}).get("spec") or {} if isinstance(data, dict) else {}
    seconds = spec.get("expirationSeconds", tokens.DEFAULT_TTL_S)
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise BadRequest("spec.expirationSeconds must be an integer")
    if seconds < tokens.MIN_TTL_S:
        raise Invalid(
            f"spec.expirationSeconds: Invalid value: {seconds}: "
            "may not specify a duration less than 10 minutes"
        )
    return seconds


def _token_request(namespace: str, account: str, seconds: int, token: str, now: float) -> Obj:
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": account, "namespace": namespace, "creationTimestamp": None},
        "spec": {"audiences": [tokens.AUDIENCE], "expirationSeconds": seconds},
        "status": {"token": token, "expirationTimestamp": rfc3339(now + seconds)},
    }


def add_ca_flags(parser: argparse.ArgumentParser) -> None:
    """The CA's flags, for `pilotfish controlplane` and the module's own main."""
    parser.add_argument(
        "--trust-domain",
        help="the mesh's SPIFFE trust domain (default: the mesh config's trustDomain, "
        "in ConfigMap istio-system/istio, else cluster.local)",
    )
    parser.add_argument(
        "--cacerts",
        type=Path,
        metavar="DIR",
        help="a plugged-in CA: DIR holds ca-cert.pem, ca-key.pem, root-cert.pem and "
        "cert-chain.pem, as Istio's cacerts (default: a self-signed root in the data directory)",
    )
    parser.add_argument(
        "--workload-cert-ttl",
        type=_duration,
        default=DEFAULT_WORKLOAD_TTL,
        metavar="DURATION",
        help="lifetime of workload certificates, a Go duration (default 24h; sidecars renew "
        "at half-life)",
    )


def ca_options(args: argparse.Namespace) -> CaOptions:
    return CaOptions(args.trust_domain, args.cacerts, args.workload_cert_ttl)


def _duration(text: str) -> datetime.timedelta:
    try:
        nanoseconds = parse_duration_ns(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return datetime.timedelta(microseconds=nanoseconds // 1000)
