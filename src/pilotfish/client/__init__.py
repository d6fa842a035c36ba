"""The Python client of the control plane's REST API, as the CLI uses it.

Objects are plain dicts. Writes go to the path of the object's own apiVersion;
reads use the kind's storage version. A Status from the server comes back as
the ApiError it names; a server that cannot be reached as `Unreachable`.
"""

from __future__ import annotations

import builtins
import http.client
import json
import re
import select
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from pilotfish.addresses import is_loopback
from pilotfish.api.errors import ApiError, Invalid
from pilotfish.api.kinds import Kind, registry
from pilotfish.config import load_client_config
from pilotfish.objects import Obj

Warnings = list[str]  # named here: inside Client, `list` is the method

APPLY = "application/apply-patch+yaml"
JSON = "application/json"
MERGE = "application/merge-patch+json"
APPLY_RESULT = "Pilotfish-Apply-Result"  # the server's word for what an apply did
_WARNING = re.compile(r'^\s*\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"')


class Unreachable(ApiError):
    """No control plane answered at the configured address."""

    code = 503
    reason = "ServiceUnavailable"


class ConnectionClosed(ApiError):
    """The server took the connection but dropped it without an answer."""

    code = 503
    reason = "ServiceUnavailable"


# A server that stops reading a body it refuses (too large) and closes the
# connection resets it under the client; that is not an absent server.
_CUT_OFF = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)
_PIECE = 64 * 1024  # a request body goes out in pieces, watching for an early answer


class _EarlyAnswer(http.client.HTTPConnection):
    """Sends a large body in pieces and stops as soon as the server has
    answered (a 413 sent before reading the body) or dropped the connection,
    so that getresponse() reads what the server said instead of the write
    failing with a broken pipe. curl does the same."""

    def send(self, data: Any) -> None:
        if not isinstance(data, bytes | bytearray) or len(data) <= _PIECE:
            super().send(data)
            return
        if self.sock is None:
            self.connect()
        sock, view, sent = self.sock, memoryview(data), 0
        wait = self.timeout if isinstance(self.timeout, int | float) else None  # not the default
        while sent < len(view):
            readable, writable, _ = select.select([sock], [sock], [], wait)
            if readable or not writable:
                return  # answered, closed, or stuck: the response (or its absence) says which
            try:
                sent += sock.send(view[sent : sent + _PIECE])
            except (BrokenPipeError, ConnectionResetError):
                return


class _EarlyAnswerTLS(http.client.HTTPSConnection, _EarlyAnswer):
    pass


class _HttpHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_EarlyAnswer, req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_EarlyAnswerTLS, req, context=self._context)  # type: ignore[attr-defined]


class Client:
    """The REST API's client. `server` may list several control-plane
    replicas, comma-separated: a request that cannot reach one goes to the
    next, which then stays the one asked."""

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        ca_file: str | None = None,
        cert: tuple[str, str] | None = None,
        insecure: bool = False,
    ) -> None:
        """`ca_file`: verify HTTPS servers with it (else the system's roots,
        SSL_CERT_FILE); `cert`: a client certificate and its key (files);
        `insecure`: no verification (a joining node's first, pinned, read)."""
        self.servers = [s.strip().rstrip("/") for s in server.split(",") if s.strip()]
        self._current = 0
        self._token = token
        self.timeout = timeout
        self._tls = (ca_file, cert, insecure)
        self.reload_tls()

    def reload_tls(self) -> None:
        """Load the CA and client certificate files again (after a renewal)."""
        ca_file, cert, insecure = self._tls
        self._openers = {
            s: opener_for(s, insecure=insecure, ca_file=ca_file, cert=cert) for s in self.servers
        }

    def __repr__(self) -> str:
        return f"Client({self.server!r})"

    @property
    def server(self) -> str:
        return self.servers[self._current]

    @classmethod
    def from_config(cls, server_override: str | None = None) -> Client:
        config = load_client_config(server_override)
        return cls(config.server, config.token, ca_file=config.certificate_authority)

    # -- writes ------------------------------------------------------------------------

    def apply(
        self, obj: Obj, *, manager: str = "pilotfish", force: bool = False, dry_run: bool = False
    ) -> tuple[Obj, Warnings]:
        """Server-side apply; the object as stored (or as it would be) and any warnings."""
        stored, warnings, _ = self.apply_outcome(obj, manager=manager, force=force, dry_run=dry_run)
        return stored, warnings

    def apply_outcome(
        self, obj: Obj, *, manager: str = "pilotfish", force: bool = False, dry_run: bool = False
    ) -> tuple[Obj, Warnings, str]:
        """`apply`, and what it did, from the same one request: `created`,
        `configured` or `unchanged` (a server that does not say: by the status,
        201 `created`, else `configured`)."""
        query = {"fieldManager": manager, **_flags(force=force, dry_run=dry_run)}
        request = self._request("PATCH", _object_path(obj, with_name=True), query, obj, APPLY)
        with self._open(request, timeout=self.timeout) as response:
            stored, warnings = _read(response)
            said = response.headers.get(APPLY_RESULT)
            created = response.status == 201
        return stored, warnings, said or ("created" if created else "configured")

    def create(self, obj: Obj, *, manager: str = "pilotfish", dry_run: bool = False) -> Obj:
        query = {"fieldManager": manager, **_flags(dry_run=dry_run)}
        return self._call("POST", _object_path(obj, with_name=False), query, obj)[0]

    def update(self, obj: Obj, *, manager: str = "pilotfish", dry_run: bool = False) -> Obj:
        """Replace the object; refused with Conflict if metadata.resourceVersion is stale."""
        query = {"fieldManager": manager, **_flags(dry_run=dry_run)}
        return self._call("PUT", _object_path(obj, with_name=True), query, obj)[0]

    def merge_patch(
        self, kind: Kind, name: str, namespace: str | None, patch: Obj, *, dry_run: bool = False
    ) -> Obj:
        """An RFC 7386 merge patch, merged by the server onto the live object."""
        path = kind.path(kind.versions[0], _namespace(kind, namespace), name)
        query = {"fieldManager": "pilotfish-patch", **_flags(dry_run=dry_run)}
        return self._call("PATCH", path, query, patch, content_type=MERGE)[0]

    def update_status(self, obj: Obj, *, manager: str = "pilotfish") -> Obj:
        """Replace the status of the object with obj["status"]; nothing else changes."""
        path = _object_path(obj, with_name=True) + "/status"
        return self._call("PUT", path, {"fieldManager": manager}, obj)[0]

    def delete(
        self,
        kind: Kind,
        name: str,
        namespace: str | None,
        *,
        dry_run: bool = False,
        resource_version: str | None = None,
    ) -> Obj:
        """Delete and return what was deleted; with `resource_version`, only that version."""
        path = kind.path(kind.versions[0], _namespace(kind, namespace), name)
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if resource_version is not None:
            body["preconditions"] = {"resourceVersion": resource_version}
        return self._call("DELETE", path, _flags(dry_run=dry_run), body)[0]

    # -- reads -------------------------------------------------------------------------

    def get(self, kind: Kind, name: str, namespace: str | None) -> Obj:
        path = kind.path(kind.versions[0], _namespace(kind, namespace), name)
        return self._call("GET", path)[0]

    def list(self, kind: Kind, namespace: str | None, label_selector: str | None = None) -> Obj:
        """The List object; `namespace` None lists every namespace."""
        query = {"labelSelector": label_selector} if label_selector else {}
        return self._call("GET", kind.path(kind.versions[0], namespace), query)[0]

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        resource_version: str | None = None,
        label_selector: str | None = None,
    ) -> Iterator[tuple[str, Obj]]:
        """(event type, object) pairs: every current object as ADDED unless
        `resource_version` is given, then changes after it, until the server
        ends the stream. An ERROR event (Expired) is raised as its ApiError."""
        query = {"watch": "true"}
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        if label_selector:
            query["labelSelector"] = label_selector
        request = self._request("GET", kind.path(kind.versions[0], namespace), query, None)
        with self._open(request, timeout=None) as response:
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise ApiError.from_status(event.get("object") or {})
                yield event["type"], event["object"]

    def tap(self, namespace: str, workload: str, query: dict[str, str]) -> Iterator[Obj]:
        """`pilotfish tap`'s stream: one object per request the workload's
        sidecars see (or `{"dropped": N}`), until the server ends it."""
        watch = "/apis/tap.pilotfish.dev/v1alpha1/watch"  # linkerd's tap API's shape
        path = f"{watch}/namespaces/{namespace}/workloads/{workload}/tap"
        request = self._request("GET", path, query, None)
        with self._open(request, timeout=None) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)

    def discovery(self, path: str) -> Obj:
        """A discovery document: /api/v1, /apis, /apis/GROUP/VERSION."""
        return self._call("GET", path)[0]

    def version(self) -> Obj:
        """The server's /version (gitVersion, major, minor, platform)."""
        return self._call("GET", "/version")[0]

    # -- the mesh: registry and proxies -----------------------------------------------

    def register_instance(self, registration: Obj) -> Obj:
        """Register a workload instance, or renew its lease (a heartbeat)."""
        return self._call("POST", "/api/v1/registry/instances", body=registration)[0]

    def deregister_instance(self, namespace: str, name: str) -> None:
        self._call("DELETE", f"/api/v1/registry/instances/{quote(namespace)}/{quote(name)}")

    def instances(self) -> builtins.list[Obj]:
        return list(self._call("GET", "/api/v1/registry/instances")[0].get("items") or [])

    def proxy_status(self) -> builtins.list[Obj]:
        """Connected proxies with their sync state per xDS type."""
        return list(self._call("GET", "/debug/syncz")[0].get("items") or [])

    def proxy_config(self, proxy_id: str, kind: str) -> Obj:
        """What a proxy was last sent of `kind` (listeners, routes, clusters, endpoints)."""
        return self._call("GET", "/debug/config_dump", {"proxyID": proxy_id, "type": kind})[0]

    def stat(self, query: dict[str, str]) -> Obj:
        """`pilotfish stat`'s rows: the dashboard's stat API with `query`'s filters."""
        return self._call("GET", "/dashboard/api/stat", query)[0]

    def cluster_info(self) -> Obj:
        """kubeadm's kube-public/cluster-info: the server and its CA, for anyone."""
        return self._call("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")[0]

    def create_csr(self, csr: Obj) -> Obj:
        """A CertificateSigningRequest; a node's is answered signed at once."""
        path = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
        return self._call("POST", path, body=csr)[0]

    def create_token(self, namespace: str, service_account: str, expiration_seconds: int) -> Obj:
        """A TokenRequest: a token bound to the service account, for the CA."""
        path = (
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(service_account)}/token"
        )
        body = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        return self._call("POST", path, body=body)[0]

    # -- the wire ----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Obj | None = None,
        content_type: str = JSON,
    ) -> tuple[Obj, Warnings]:
        request = self._request(method, path, query or {}, body, content_type)
        with self._open(request, timeout=self.timeout) as response:
            return _read(response)

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Obj | None,
        content_type: str = JSON,
    ) -> urllib.request.Request:
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": JSON, "User-Agent": "pilotfish-client"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def _open(self, request: urllib.request.Request, timeout: float | None) -> Any:
        for _ in self.servers[1:]:
            try:
                return self._open_one(request, timeout)
            except Unreachable:  # nothing reached that replica: the next one
                before = self.server
                self._current = (self._current + 1) % len(self.servers)
                request.full_url = self.server + request.full_url[len(before) :]
        return self._open_one(request, timeout)

    def _open_one(self, request: urllib.request.Request, timeout: float | None) -> Any:
        try:
            return self._openers[self.server].open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise _error_of(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(request.data, bytes) and isinstance(reason, _CUT_OFF):
                raise ConnectionClosed(
                    f"the control plane at {self.server} closed the connection before it "
                    f"answered a request of {_size(len(request.data))}"
                ) from e
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise Unreachable(
                    f"cannot verify the control plane's certificate at {self.server}: "
                    f"{reason.verify_message} (give its CA: --certificate-authority FILE, "
                    "or SSL_CERT_FILE)"
                ) from e
            raise Unreachable(
                f'cannot reach the control plane at {self.server}: is "pilotfish controlplane" '
                "running?"
            ) from e


class RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects as Go's http.Client (kubectl's, Flagger's): to http(s)
    only, and credentials go on to the same host or a subdomain of it only.
    urllib's own handler sends the token or password to whatever host the
    answer names."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme not in ("http", "https"):
            # urllib would follow to ftp:// too: a TCP connection to any port the
            # answer names, speaking FTP (Go's client only follows http and https).
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to {newurl!r} refused: not http(s)", headers, fp
            )
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not _same_site(req.full_url, new.full_url):
            for name in _CREDENTIAL_HEADERS:
                new.remove_header(name)
        return new


_CREDENTIAL_HEADERS = ("Authorization", "Proxy-authorization", "Cookie", "Cookie2")


def _same_site(initial: str, target: str) -> bool:
    """Go's shouldCopyHeaderOnRedirect: the same host name, or a subdomain of it."""
    first = (urlsplit(initial).hostname or "").lower()
    then = (urlsplit(target).hostname or "").lower()
    return then == first or then.endswith("." + first)


def opener_for(
    url: str,
    *,
    insecure: bool = False,
    proxy: str = "",
    ca_file: str | None = None,
    cert: tuple[str, str] | None = None,
) -> urllib.request.OpenerDirector:
    """`proxy` if given, else proxies from the environment except for
    loopback hosts, as Go's ProxyFromEnvironment: a proxy could not reach this
    host, and would see the token. No certificate checks when `insecure`;
    else against `ca_file` if given. `cert`: a client certificate (and key)
    to present. Redirects keep credentials on their host (RedirectHandler)."""
    handlers: list[urllib.request.BaseHandler] = [_HttpHandler(), RedirectHandler()]
    host = urlsplit(url).hostname or ""
    if proxy:
        handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    elif host == "localhost" or is_loopback(host):
        handlers.append(urllib.request.ProxyHandler({}))
    context = None
    if insecure or ca_file or cert:
        context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        assert context is not None
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        assert context is not None
        context.load_cert_chain(*cert)
    handlers.append(_HttpsHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _object_path(obj: Obj, *, with_name: bool) -> str:
    kind, version = registry().for_object(obj)
    meta = obj.get("metadata") or {}
    name = meta.get("name") if with_name else None
    if with_name and not name:
        raise Invalid(f"{obj.get('kind')}: metadata.name: Required value")
    return kind.path(version, _namespace(kind, meta.get("namespace")), name)


def _namespace(kind: Kind, namespace: str | None) -> str | None:
    return (namespace or "default") if kind.namespaced else None


def _read(response: Any) -> tuple[Obj, Warnings]:
    """An answer's object and the warnings of its `Warning` headers."""
    data = json.loads(response.read() or b"{}")
    return data, [_warning_text(w) for w in response.headers.get_all("Warning") or []]


def _flags(*, force: bool = False, dry_run: bool = False) -> dict[str, str]:
    flags = {"force": "true"} if force else {}
    if dry_run:
        flags["dryRun"] = "All"
    return flags


def _error_of(error: urllib.error.HTTPError) -> ApiError:
    """The server's Status as its ApiError; a body that is not one still gets a clear message."""
    raw = error.read()
    try:
        status = json.loads(raw)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return ApiError.from_status(status)
    text = raw.decode("utf-8", "replace").strip() or error.reason
    found = ApiError(f"the server answered {error.code}: {text}")
    found.from_server = True
    return found


def _size(length: int) -> str:
    """`20.0 MB`, `512 bytes`: a request's size as a user reads it."""
    return f"{length / 1e6:.1f} MB" if length >= 1_000_000 else f"{length} bytes"


def _warning_text(header: str) -> str:
    match = _WARNING.match(header)
    if match is None:
        return header.strip()
    return re.sub(r"\\(.)", r"\1", match.group(1))
