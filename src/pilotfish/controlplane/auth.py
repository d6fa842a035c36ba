"""Who may call the API, decided as Kubernetes' authenticator and authorizer do.

Callers, from a bearer token or its absence:
  - the admin token (DATA_DIR/token, made on first start, 0600): everything;
  - read-only tokens (`pilotfish token create --read-only NAME`, kept hashed in
    DATA_DIR/readonly-tokens, 0600): every read, Secrets included; no write;
  - no token, from a loopback peer while anonymous reads are on:
    "system:anonymous", who may read everything but Secrets and write nothing;
  - a workload's service account token (the one its sidecar shows the CA):
    "system:serviceaccount:NS:SA", who may only post telemetry (spans);
  - a bootstrap token (bootstrap_tokens.py): "system:bootstrap:ID", who may
    only ask for a node certificate (CSR_PATH);
  - a client certificate for "system:node:NAME" from the mesh CA, verified
    by the TLS layer: the node, whose rules are nodes.py's;
  - no token otherwise (another host, or `--anonymous-reads=false`), or a
    token that is not valid: 401 Unauthorized.
Telemetry (`POST /v1/traces`) is open to loopback callers without a token
whatever `anonymous_reads` says, as the sidecars on this host export there.
A known caller asking for what it may not do gets 403 Forbidden, worded as
apiserver words it. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pilotfish.addresses import is_loopback
from pilotfish.api.errors import AlreadyExists, BadRequest, Forbidden, NotFound, Unauthorized
from pilotfish.ca.tokens import SUBJECT_PREFIX, ServiceAccountTokens, TokenError
from pilotfish.config import write_private
from pilotfish.controlplane.bootstrap_tokens import BootstrapTokens
from pilotfish.controlplane.watched_file import WatchedFile, read_json_object

log = logging.getLogger(__name__)

TOKEN_FILE = "token"
READ_ONLY_TOKENS_FILE = "readonly-tokens"
ANONYMOUS = "system:anonymous"
ADMIN = "admin"
READ_VERBS = frozenset({"get", "list", "watch"})
SECRETS = ("", "secrets")  # (API group, resource) that anonymous callers never read
_BEARER = "bearer "
# Writes every member of the mesh may make: sidecars export their spans here.
TELEMETRY_PATHS = frozenset({"/v1/traces"})
_TOKEN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

# The one thing a bootstrap token may do: ask for its node's certificate.
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"

Role = Literal["admin", "reader", "anonymous", "workload", "bootstrap", "node"]
# A verified client certificate's subject: (common name, organizations).
CertSubject = tuple[str, tuple[str, ...]]


class NodeRules(Protocol):
    """What a node's certificate allows (nodes.py), NodeRestriction-like."""

    def may(self, node: str, attributes: Attributes) -> bool: ...

    def admit_body(self, node: str, method: str, path: str, body: bytes) -> None: ...


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role

    def may(self, attributes: Attributes) -> bool:
        if self.role == "admin":
            return True
        if self.role == "bootstrap":
            return attributes.verb == "post" and attributes.path == CSR_PATH
        if attributes.path in TELEMETRY_PATHS and attributes.verb == "post":
            return self.role in ("anonymous", "workload")
        if self.role in ("workload", "node") or attributes.verb not in READ_VERBS:
            return False
        return self.role == "reader" or (attributes.group, attributes.resource) != SECRETS


@dataclass(frozen=True)
class Attributes:
    """What a request asks to do, as Kubernetes' authorizer sees it: a verb on a
    resource (a plural; "" for a path outside the resource API) or on a path."""

    verb: str
    path: str
    resource: str = ""
    group: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""


def forbidden(caller: Caller, attributes: Attributes) -> Forbidden:
    """apiserver's refusal: `secrets is forbidden: User "system:anonymous" cannot
    list resource "secrets" in API group "" in the namespace "default"`."""
    a = attributes
    user = json.dumps(caller.name)
    if not a.resource:
        return Forbidden(f"forbidden: User {user} cannot {a.verb} path {json.dumps(a.path)}")
    resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    scope = f"in the namespace {json.dumps(a.namespace)}" if a.namespace else "at the cluster scope"
    why = (
        f"User {user} cannot {a.verb} resource {json.dumps(resource)} "
        f"in API group {json.dumps(a.group)} {scope}"
    )
    qualified = f"{a.resource}.{a.group}" if a.group else a.resource
    subject = f"{qualified} {json.dumps(a.name)}" if a.name else qualified
    details = {"name": a.name, "group": a.group, "kind": a.resource}
    return Forbidden(f"{subject} is forbidden: {why}", {k: v for k, v in details.items() if v})


class Authenticator:
    """Turns a request's credentials into a Caller, or refuses it with 401."""

    def __init__(
        self,
        admin_token: str,
        *,
        data_dir: Path | None = None,
        anonymous_reads: bool = True,
        workloads: ServiceAccountTokens | None = None,
        bootstrap: BootstrapTokens | None = None,
        nodes: NodeRules | None = None,
    ) -> None:
        self._admin = admin_token.encode()
        self._workloads = workloads
        self._bootstrap = bootstrap
        self.nodes = nodes
        self._readers = ReadOnlyTokens(data_dir) if data_dir is not None else None
        self.anonymous_reads = anonymous_reads

    def __repr__(self) -> str:
        return f"Authenticator(anonymous_reads={self.anonymous_reads})"

    def caller(
        self,
        authorization: str | None,
        peer: str,
        *,
        public: bool = False,
        certificate: CertSubject | None = None,
    ) -> Caller:
        """`public`: a path for local callers without a token (Flagger's
        webhooks), open to loopback whatever `anonymous_reads` says.
        `certificate`: the subject of a client certificate the TLS layer
        verified against the mesh root; a node's authenticates it, as
        apiserver's x509 authenticator comes before its token ones."""
        node = node_of(certificate) if self.nodes is not None else None
        if node is not None:
            return Caller(NODE_PREFIX + node, "node")
        presented = bearer_token(authorization)
        if presented is not None:
            found = self._by_token(presented)
            if found is None:
                raise Unauthorized("Unauthorized")
            return found
        if is_loopback(peer) and (self.anonymous_reads or public):
            return Caller(ANONYMOUS, "anonymous")
        raise Unauthorized("Unauthorized")

    def _by_token(self, presented: str) -> Caller | None:
        given = presented.encode()
        if hmac.compare_digest(given, self._admin):
            return Caller(ADMIN, "admin")
        name = self._readers.match(given) if self._readers is not None else None
        if name is not None:
            return Caller(name, "reader")
        bootstrapper = self._bootstrap.user(presented) if self._bootstrap is not None else None
        if bootstrapper is not None:
            return Caller(bootstrapper, "bootstrap")
        return self._workload(presented)

    def may(self, caller: Caller, attributes: Attributes) -> bool:
        if caller.role == "node" and self.nodes is not None:
            return self.nodes.may(caller.name.removeprefix(NODE_PREFIX), attributes)
        return caller.may(attributes)

    def _workload(self, presented: str) -> Caller | None:
        if self._workloads is None or presented.count(".") != 2:
            return None
        try:
            namespace, account = self._workloads.verify(presented)
        except TokenError:
            return None
        return Caller(f"{SUBJECT_PREFIX}{namespace}:{account}", "workload")


class ReadOnlyTokens:
    """DATA_DIR/readonly-tokens: {NAME: sha256 of the token}, so the file alone
    gives no one a token. Re-read when it changes, so `pilotfish token create`
    takes effect on a running control plane."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / READ_ONLY_TOKENS_FILE
        self._file: WatchedFile[dict[str, bytes]] = WatchedFile(
            self.path, lambda: _hashes(self.path), {}
        )

    def match(self, given: bytes) -> str | None:
        digest = hashlib.sha256(given).digest()
        found = None
        for name, expected in self._file.current().items():
            # Every entry is compared, so the time taken says nothing about which matched.
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def _hashes(path: Path) -> dict[str, bytes]:
    return {n: bytes.fromhex(h) for n, h in read_token_hashes(path).items()}


def read_token_hashes(path: Path) -> dict[str, str]:
    loaded = read_json_object(path, "token names to hashes")
    return {str(name): str(digest) for name, digest in loaded.items()}


def create_read_only_token(data_dir: Path, name: str) -> str:
    """A new read-only token called `name`; only its hash is kept, so this is
    the one time it is seen."""
    if not _TOKEN_NAME.match(name):
        raise BadRequest(
            f'invalid token name "{name}": lower case letters, digits and "-", '
            "starting and ending with a letter or digit, at most 63 characters"
        )
    path = data_dir / READ_ONLY_TOKENS_FILE
    hashes = read_token_hashes(path)
    if name in hashes:
        raise AlreadyExists(f'read-only token "{name}" already exists')
    token = secrets.token_urlsafe(32)
    hashes[name] = hashlib.sha256(token.encode()).hexdigest()
    write_private(path, json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    return token


def delete_read_only_token(data_dir: Path, name: str) -> None:
    path = data_dir / READ_ONLY_TOKENS_FILE
    hashes = read_token_hashes(path)
    if hashes.pop(name, None) is None:
        raise NotFound(f'read-only token "{name}" not found')
    write_private(path, json.dumps(hashes, indent=2, sort_keys=True) + "\n")


def read_only_token_names(data_dir: Path) -> list[str]:
    return sorted(read_token_hashes(data_dir / READ_ONLY_TOKENS_FILE))


def load_or_create_token(data_dir: Path) -> str:
    """The admin token in DATA_DIR/token, written there first if there is none."""
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_private(path, token + "\n")
    os.chmod(path, 0o600)  # a copy made by hand with a looser mode is tightened
    return token


def node_of(certificate: CertSubject | None) -> str | None:
    """The node a client certificate names (CN "system:node:NAME" in the
    organization "system:nodes", as the kubelet's), or None."""
    if certificate is None:
        return None
    common_name, organizations = certificate
    name = common_name.removeprefix(NODE_PREFIX)
    if name == common_name or not name or NODES_GROUP not in organizations:
        return None
    return name


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header; None without one."""
    if not authorization:
        return None
    if not authorization.lower().startswith(_BEARER):
        return ""  # credentials of another scheme: present, and not valid here
    return authorization[len(_BEARER) :].strip()


def has_token(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token`, compared in constant time."""
    given = bearer_token(authorization)
    return given is not None and given != "" and hmac.compare_digest(given.encode(), token.encode())
