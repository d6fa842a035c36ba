"""The REST API as a function: Request in, Response out, no sockets.

Paths are Kubernetes': `/api/v1/...` for the core group, `/apis/GROUP/VERSION/...`
for the rest, `namespaces/NS/` before the plural for a namespaced object.
Every error is a Status object with its HTTP code. The HTTP shell (http.py)
only moves bytes; a watch comes back as an EventStream the shell drains.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from pilotfish.api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Invalid,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)
from pilotfish.api.kinds import Kind, KindRegistry, registry
from pilotfish.controlplane import openapi
from pilotfish.controlplane.auth import (
    NODE_PREFIX,
    TELEMETRY_PATHS,
    Attributes,
    Authenticator,
    Caller,
    CertSubject,
    forbidden,
)
from pilotfish.controlplane.bodies import parse
from pilotfish.controlplane.browsers import refuse_cross_site
from pilotfish.objects import Obj, user_part
from pilotfish.store.resources import ResourceStore
from pilotfish.store.selectors import (
    Selector,
    object_fields,
    parse_field_selector,
    parse_selector,
)
from pilotfish.store.types import Event, Key, Watch

log = logging.getLogger(__name__)

Lookup = Callable[[str, str, str | None], list[Obj]]  # namespace None: every namespace
Analyzer = Callable[[Obj, Lookup], list[str]]
CAUGHT_UP_S = 1.0  # how long analysis waits for the config in memory to hold a write


class ConfigCache(Protocol):
    """The store's config kept in memory by a watch (the mesh registry)."""

    def listed(self, group: str, kind: str, namespace: str | None) -> list[Obj]: ...

    def caught_up(self, revision: int, timeout: float) -> bool: ...


# Serves paths beyond the resource API (registry, xDS debug); None: not its path.
Extension = Callable[["Request", str], "Response | None"]

MAX_FIELD_MANAGER = 128  # Kubernetes' limit on a fieldManager name
APPLY = "application/apply-patch+yaml"
# What a server-side apply did: `created`, `configured` or `unchanged`, the words
# `pilotfish apply` prints, so that it needs no GET before its one PATCH. Kubernetes
# says "created" with 201 alone and has no word for a no-op apply.
APPLY_RESULT = "Pilotfish-Apply-Result"
MERGE = "application/merge-patch+json"
JSON_TYPES = ("", "application/json")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
HEALTH_PATHS = ("/healthz", "/readyz", "/livez")
# Read by anyone, as kubeadm's RBAC lets system:unauthenticated read it.
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
# Paths anyone local may call: Flagger's webhooks (to the load tester) carry no token.
PUBLIC_PREFIXES = ("/loadtester",)
_READS = ("GET", "HEAD")
_INT64_MAX = 2**63 - 1
_RESOURCE_VERBS = {"post": "create", "put": "update"}  # the rest are named as their method
# Kubernetes' own wording, so messages users search for lead somewhere.
_API_VERSION_MISMATCH = (
    "the API version in the data ({given}) does not match the expected API version ({expected})"
)
_KIND_MISMATCH = "the kind in the data ({given}) does not match the expected kind ({expected})"
_NAMESPACE_MISMATCH = (
    "the namespace of the provided object ({given}) does not match "
    "the namespace sent on the request ({expected})"
)
_NAME_MISMATCH = "the name of the object ({given}) does not match the name on the URL ({expected})"
_MERGE_RETRIES = 20  # a merge patch re-reads and retries when another write got in between


class LineStream(Protocol):
    """What the HTTP shell drains line by line: a watch, or server-sent events."""

    done: bool

    def next_line(self, timeout: float) -> bytes | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""
    peer: str = "127.0.0.1"
    certificate: CertSubject | None = None  # a client certificate the TLS layer verified

    @classmethod
    def of(
        cls,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        peer: str = "127.0.0.1",
        certificate: CertSubject | None = None,
    ) -> Request:
        """A request from its request line's target (`/path?query`)."""
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        return cls(method.upper(), parts.path or "/", query, lowered, body, peer, certificate)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: LineStream | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def warnings(self) -> list[str]:
        return [value for name, value in self.headers if name == "Warning"]


@dataclass(frozen=True)
class Target:
    """What a resource path names: a collection (name None), an object, or its status."""

    kind: Kind
    version: str
    namespace: str | None  # None: cluster-scoped, or every namespace
    name: str | None = None
    subresource: str | None = None

    @property
    def api_version(self) -> str:
        return self.kind.api_version(self.version)

    def key(self) -> Key:
        assert self.name is not None
        return Key(self.kind.group, self.kind.kind, self.namespace or "", self.name)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def status_response(error: ApiError) -> Response:
    return Response(error.code, encode(error.to_status()))


class Api:
    """Routes each request to the store; holds no state of its own beyond caches."""

    def __init__(
        self,
        store: ResourceStore,
        auth: Authenticator | str,
        *,
        analyze: Analyzer | None = None,
        kinds: KindRegistry | None = None,
        extension: Extension | None = None,
        config: ConfigCache | None = None,
    ) -> None:
        """`config`: what `analyze` reads instead of listing the store, once
        it holds the write analyzed."""
        self.store = store
        self._config = config
        self.extension = extension
        # A plain string is the admin token, with the default rules for the rest.
        self.auth = auth if isinstance(auth, Authenticator) else Authenticator(auth)
        self._analyze = analyze
        self.kinds = kinds or registry()
        self._documents: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"Api({self.store!r})"

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except ApiError as e:
            return status_response(e)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return status_response(ApiError("an internal error occurred; see the server log"))

    def admit(self, request: Request) -> Caller | None:
        """Authenticate and authorize from the request's head alone, so the HTTP
        shell can refuse a caller before reading a byte of its body."""
        path = _clean(request.path)
        if path in HEALTH_PATHS or (path == CLUSTER_INFO and request.method in _READS):
            return None  # cluster-info: how a joining node finds the CA it has the hash of
        public = _public(path)
        local = public or path in TELEMETRY_PATHS  # loopback needs no token here
        caller = self.auth.caller(
            request.header("authorization"),
            request.peer,
            public=local,
            certificate=request.certificate,
        )
        attributes = self.attributes(request, path)
        if not public and not self.auth.may(caller, attributes):
            raise forbidden(caller, attributes)
        if caller.role == "anonymous":  # what a web page could make a browser send
            refuse_cross_site(request.headers)
        return caller

    def attributes(self, request: Request, path: str) -> Attributes:
        """The verb and resource a request asks for, as Kubernetes' RequestInfo."""
        method = "get" if request.method == "HEAD" else request.method.lower()
        try:
            target = self.target(path)
        except NotFound:
            return Attributes(method, path)  # a non-resource path: the verb is the method
        verb = _RESOURCE_VERBS.get(method, method)
        if verb == "get" and target.name is None:
            verb = "watch" if _flag(request.query, "watch") else "list"
        return Attributes(
            verb,
            path,
            target.kind.plural,
            target.kind.group,
            target.namespace or "",
            target.name or "",
            target.subresource or "",
        )

    def _route(self, request: Request) -> Response:
        path = _clean(request.path)
        if path in HEALTH_PATHS:
            return Response(200, b"ok", "text/plain; charset=utf-8")
        caller = self.admit(request)
        if caller is not None and caller.role == "node" and self.auth.nodes is not None:
            # What a node may write depends on the body too (its own instances).
            node = caller.name.removeprefix(NODE_PREFIX)
            self.auth.nodes.admit_body(node, request.method, path, request.body)
        extra = self.extension(request, path) if self.extension else None
        if extra is not None:
            return extra
        document = self._document(path)
        if document is not None:
            if request.method not in _READS:
                raise MethodNotAllowed(f"{request.method} is not supported on {path}")
            return Response(200, document)
        return self._dispatch(request, self.target(path))

    def _document(self, path: str) -> bytes | None:
        """Discovery, /version and OpenAPI: built on first request, then kept."""
        if path not in self._documents:
            found = openapi.document(self.kinds, path)
            if found is None:
                return None
            self._documents[path] = encode(found)
        return self._documents[path]

    # -- paths -------------------------------------------------------------------------

    def target(self, path: str) -> Target:
        parts = path.strip("/").split("/")
        if "" in parts:
            raise _no_such_path(path)
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _no_such_path(path)
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2:] != ["status"]:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise _no_such_path(path)
        kind = self.kinds.by_plural(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        if (namespace is not None and not kind.namespaced) or (
            namespace is None and kind.namespaced and name is not None
        ):
            raise _no_such_path(path)
        return Target(kind, version, namespace, name, rest[2] if len(rest) == 3 else None)

    # -- verbs -------------------------------------------------------------------------

    def _dispatch(self, request: Request, target: Target) -> Response:
        method, item = request.method, target.name is not None
        if method == "GET" and not item:
            if _flag(request.query, "watch"):
                return self._watch(request, target)
            return self._list(request, target)
        if method == "GET":
            return self._ok(target, self.store.get(target.key()))
        if method == "POST" and not item:
            if target.namespace is None and target.kind.namespaced:
                raise MethodNotAllowed(
                    f"POST is not supported on a list across namespaces; "
                    f"create under {target.kind.path(target.version, 'NAMESPACE')}"
                )
            return self._create(request, target)
        if method == "PUT" and item:
            return self._put(request, target)
        if method == "PATCH" and item:
            return self._patch(request, target)
        if method == "DELETE" and item and target.subresource is None:
            return self._delete(request, target)
        where = "an object" if item else "a list"
        raise MethodNotAllowed(f"{method} is not supported on {where} ({request.path})")

    def _list(self, request: Request, target: Target) -> Response:
        _deadline(request.query.get("timeoutSeconds"))  # a list takes it too: refuse a bad one
        fields = parse_field_selector(request.query.get("fieldSelector"))
        items, revision = self.store.list(
            target.kind.group,
            target.kind.kind,
            target.namespace,
            request.query.get("labelSelector"),
        )
        items = [i for i in items if fields.matches(object_fields(i.get("metadata")))]
        body = {
            "kind": f"{target.kind.kind}List",
            "apiVersion": target.api_version,
            "metadata": {"resourceVersion": revision},
            "items": [_in_version(item, target) for item in items],
        }
        return Response(200, encode(body))

    def _watch(self, request: Request, target: Target) -> Response:
        selector = parse_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"))
        deadline = _deadline(request.query.get("timeoutSeconds"))
        try:
            watch = self.store.watch(
                target.kind.group,
                target.kind.kind,
                target.namespace,
                request.query.get("resourceVersion"),
            )
        except ApiError as e:
            if e.code != 410:
                raise
            stream = EventStream(None, target, selector, deadline, error=e)
            return Response(200, stream=stream)
        return Response(200, stream=EventStream(watch, target, selector, deadline, fields=fields))

    def _create(self, request: Request, target: Target) -> Response:
        obj = self._bind(_body(request), target)
        created = self.store.create(obj, manager=_manager(request), dry_run=_dry_run(request.query))
        return self._ok(target, created, 201, warn=True)

    def _put(self, request: Request, target: Target) -> Response:
        obj = self._bind(_body(request), target)
        if target.subresource == "status":
            _no_dry_run_of_status(request)
            version = obj.get("metadata", {}).get("resourceVersion")
            updated = self.store.update_status(
                target.key(),
                obj.get("status") or {},
                resource_version=str(version) if version not in (None, "") else None,
                manager=_manager(request),
            )
        else:
            updated = self.store.update(
                obj, manager=_manager(request), dry_run=_dry_run(request.query)
            )
        return self._ok(target, updated, warn=True)

    def _patch(self, request: Request, target: Target) -> Response:
        if request.content_type == APPLY:
            return self._apply(request, target)
        if request.content_type == MERGE:
            if "force" in request.query:
                raise Invalid("force: Forbidden: may not be specified for non-apply patch")
            return self._ok(target, self._merge(request, target), warn=True)
        raise UnsupportedMediaType(
            f'the patch type "{request.content_type or "(none)"}" is not supported; '
            f'use "{APPLY}" (server-side apply) or "{MERGE}"'
        )

    def _apply(self, request: Request, target: Target) -> Response:
        manager = request.query.get("fieldManager")
        if not manager:
            raise BadRequest(
                "PATCH requests with apply-patch+yaml content type require fieldManager"
            )
        _checked_manager(manager)
        if target.subresource is not None:
            raise BadRequest("server-side apply of the status subresource is not supported")
        before = self._live_or_none(target)
        applied = self.store.apply(
            self._bind(_body(request, yaml_too=True), target),
            manager=manager,
            force=_flag(request.query, "force"),
            dry_run=_dry_run(request.query),
        )
        outcome = apply_outcome(before, applied)
        response = self._ok(target, applied, 201 if outcome == "created" else 200, warn=True)
        response.headers.append((APPLY_RESULT, outcome))
        return response

    def _live_or_none(self, target: Target) -> Obj | None:
        try:
            return self.store.get(target.key())
        except NotFound:
            return None

    def _merge(self, request: Request, target: Target) -> Obj:
        """RFC 7386 merge onto the live object, then an update; pinned to the
        patch's resourceVersion if it gives one, else retried on a lost race."""
        patch = _body(request)
        meta = patch.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest("metadata: must be an object")
        pinned = (meta or {}).get("resourceVersion")
        if target.subresource == "status":
            _no_dry_run_of_status(request)
        for _ in range(_MERGE_RETRIES):
            live = self.store.get(target.key())
            merged = merge_patch(live, patch)
            merged["apiVersion"] = patch.get("apiVersion") or target.api_version
            merged = self._bind(merged, target)
            merged["metadata"]["resourceVersion"] = pinned or live["metadata"]["resourceVersion"]
            try:
                if target.subresource == "status":
                    return self.store.update_status(
                        target.key(),
                        merged.get("status") or {},
                        resource_version=str(merged["metadata"]["resourceVersion"]),
                        manager=_manager(request),
                    )
                return self.store.update(
                    merged, manager=_manager(request), dry_run=_dry_run(request.query)
                )
            except Conflict:
                if pinned:
                    raise
        raise Conflict(f'{target.kind.qualified} "{target.name}": too many concurrent writes')

    def _delete(self, request: Request, target: Target) -> Response:
        options = _body(request) if request.body.strip() else {}
        check_delete_options(options)
        preconditions = options.get("preconditions") or {}
        dry_run = _dry_run(request.query) or bool(options.get("dryRun"))
        deleted = self.store.delete(
            target.key(),
            resource_version=preconditions.get("resourceVersion") or None,
            uid=preconditions.get("uid") or None,
            dry_run=dry_run,
        )
        return self._ok(target, deleted)

    # -- bodies and answers ------------------------------------------------------------

    def _bind(self, obj: Obj, target: Target) -> Obj:
        """The body, checked against the path it was sent to, and completed from
        it where it is silent (so `curl -d '{"spec": ...}'` to an object's URL works)."""
        obj = dict(obj)
        _agree(obj, "apiVersion", target.api_version, _API_VERSION_MISMATCH)
        _agree(obj, "kind", target.kind.kind, _KIND_MISMATCH)
        meta = obj.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest("metadata: must be an object")
        meta = obj["metadata"] = dict(meta or {})
        if target.namespace is not None:
            _agree(meta, "namespace", target.namespace, _NAMESPACE_MISMATCH)
        if target.name is not None:
            _agree(meta, "name", target.name, _NAME_MISMATCH)
        return obj

    def _ok(self, target: Target, obj: Obj, code: int = 200, *, warn: bool = False) -> Response:
        """The object in the path's version; after a write of an object (not of
        its status, which analysis never reads), with analysis warnings."""
        warnings = self._warnings(obj) if warn and target.subresource != "status" else []
        headers = [("Warning", warning_header(w)) for w in warnings]
        return Response(code, encode(_in_version(obj, target)), headers=headers)

    def _warnings(self, obj: Obj) -> list[str]:
        if self._analyze is None:
            return []
        try:
            return self._analyze(obj, self._lookup_after(obj))
        except Exception:
            # Warnings are advice: a bug in one analyzer must not fail a write that succeeded.
            log.exception("analysis of %s failed", obj.get("metadata", {}).get("name"))
            return []

    def _lookup_after(self, written: Obj) -> Lookup:
        """The config in memory once it holds `written`'s revision (so a
        client's earlier writes are seen too); else the store's own lists."""
        revision = str(written.get("metadata", {}).get("resourceVersion") or "")
        config = self._config
        if (
            config is not None
            and revision.isdigit()
            and config.caught_up(int(revision), CAUGHT_UP_S)
        ):
            return config.listed

        def listed(group: str, kind: str, namespace: str | None) -> list[Obj]:
            return self.store.list(group, kind, namespace)[0]

        return listed


class EventStream:
    """A watch as JSON lines, `{"type": ..., "object": ...}`, in the path's version.
    An Expired watch (or one that expires on the way) ends with one ERROR line."""

    def __init__(
        self,
        watch: Watch | None,
        target: Target,
        selector: Selector,
        deadline: float | None,
        *,
        error: ApiError | None = None,
        fields: Selector | None = None,
    ) -> None:
        self._watch = watch
        self._fields = fields or Selector(())
        self._target = target
        self._selector = selector
        self._deadline = deadline
        self._pending = [_error_line(error)] if error else []
        self.done = False

    def __repr__(self) -> str:
        return f"EventStream({self._target.kind.kind}, {self._watch!r}, done={self.done})"

    def next_line(self, timeout: float) -> bytes | None:
        """The next line, or None if none came within `timeout` (then check `done`)."""
        if self._pending:
            return self._pending.pop(0)
        if self._watch is None or self._expired():
            self.done = True
            return None
        try:
            event = self._watch.next(self._wait(timeout))
        except ApiError as e:
            self._watch.close()
            self._watch = None
            return _error_line(e)
        if event is None or not self._wanted(event):
            return None
        return encode({"type": event.type, "object": _in_version(event.object, self._target)})

    def close(self) -> None:
        self.done = True
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _wanted(self, event: Event) -> bool:
        meta = event.object.get("metadata", {})
        return self._selector.matches(meta.get("labels")) and self._fields.matches(
            object_fields(meta)
        )

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _wait(self, timeout: float) -> float:
        if self._deadline is None:
            return timeout
        return max(0.0, min(timeout, self._deadline - time.monotonic()))


def chain(*extensions: Extension | None) -> Extension:
    """Extensions asked in turn (None: one that is off); the first answer wins."""

    def ask(request: Request, path: str) -> Response | None:
        for extension in filter(None, extensions):
            answer = extension(request, path)
            if answer is not None:
                return answer
        return None

    return ask


def _clean(path: str) -> str:
    return path.rstrip("/") or "/"


def _public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_PREFIXES)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def warning_header(text: str) -> str:
    """RFC 7234 warn-code 299 with the text quoted, on one line, as Kubernetes sends it."""
    clean = " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{clean.encode("latin-1", "replace").decode("latin-1")}"'


def _error_line(error: ApiError) -> bytes:
    return encode({"type": "ERROR", "object": error.to_status()})


def apply_outcome(before: Obj | None, after: Obj) -> str:
    """`created` if there was no object; `unchanged` if what the user sees of
    it is the same (not the fields the server keeps: so a dry run, which
    keeps the revision, still says `configured`); else `configured`. A write
    by someone else between the read and the apply counts, as it did when
    the CLI sent a GET before its PATCH."""
    if before is None:
        return "created"
    return "unchanged" if user_part(before) == user_part(after) else "configured"


def _no_such_path(path: str) -> NotFound:
    return NotFound(f"the server could not find the requested resource ({path})")


def _in_version(obj: Obj, target: Target) -> Obj:
    return {**obj, "apiVersion": target.api_version}


def _agree(obj: Obj, field_name: str, expected: str, mismatch: str) -> None:
    """Fill `field_name` from the path if the body lacks it; refuse a body that disagrees."""
    given = obj.get(field_name)
    if given in (None, ""):
        obj[field_name] = expected
    elif given != expected:
        raise BadRequest(mismatch.format(given=given, expected=expected))


def _body(request: Request, *, yaml_too: bool = False) -> Obj:
    content_type = request.content_type
    as_yaml = content_type in YAML_TYPES or (yaml_too and content_type == APPLY)
    if not as_yaml and content_type not in (*JSON_TYPES, MERGE):
        raise UnsupportedMediaType(f'the media type "{content_type}" is not supported')
    parsed = parse(request.body, as_yaml=as_yaml)
    if not isinstance(parsed, dict):
        raise BadRequest("the request body must be an object")
    return parsed


# DeleteOptions' fields: (JSON type, Go's name of the type), as apiserver decodes them.
_DELETE_OPTIONS = {
    "kind": (str, "string"),
    "apiVersion": (str, "string"),
    "gracePeriodSeconds": (int, "int64"),
    "preconditions": (dict, "v1.Preconditions"),
    "orphanDependents": (bool, "bool"),
    "propagationPolicy": (str, "v1.DeletionPropagation"),
    "dryRun": (list, "[]string"),
    "ignoreStoreReadErrorWithClusterBreakingPotential": (bool, "bool"),
}
_PRECONDITIONS = {"uid": (str, "types.UID"), "resourceVersion": (str, "string")}


def check_delete_options(options: Obj) -> None:
    """Refuse a DeleteOptions field of the wrong type with Go's decoding error,
    which names it (null is as good as absent, as in Go)."""
    _check_fields(options, _DELETE_OPTIONS, "DeleteOptions")
    _check_fields(options.get("preconditions") or {}, _PRECONDITIONS, "DeleteOptions.preconditions")
    for value in options.get("dryRun") or []:
        if not isinstance(value, str):
            raise _unmarshal(value, "DeleteOptions.dryRun", "string")
        if value != "All":
            raise BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')


def _check_fields(obj: Obj, fields: Mapping[str, tuple[type, str]], where: str) -> None:
    for name, (wanted, go_type) in fields.items():
        value = obj.get(name)
        if value is None:
            continue
        # bool is an int in Python, never in JSON; a whole float is an integer in JSON.
        fits = isinstance(value, wanted) and not (wanted is int and isinstance(value, bool))
        if not fits and not (wanted is int and isinstance(value, float) and value.is_integer()):
            raise _unmarshal(value, f"{where}.{name}", go_type)


def _unmarshal(value: Any, field_path: str, go_type: str) -> BadRequest:
    kinds = {bool: "bool", int: "number", float: "number", str: "string", list: "array"}
    given = kinds.get(type(value), "object")
    return BadRequest(
        f"json: cannot unmarshal {given} into Go struct field {field_path} of type {go_type}"
    )


def _flag(query: Mapping[str, str], name: str) -> bool:
    """Kubernetes' query booleans: absent, false or 0 is false; given without a
    value (`?watch`) is true. Other text is refused rather than taken as true."""
    value = query.get(name, "false").lower()
    if value in ("true", "1", ""):
        return True
    if value in ("false", "0"):
        return False
    raise BadRequest(f'{name}: Invalid value: "{value}": must be true or false')


def _dry_run(query: Mapping[str, str]) -> bool:
    value = query.get("dryRun")
    if value is None:
        return False
    if value == "All":
        return True
    raise BadRequest(f'dryRun: Unsupported value: "{value}": supported values: "All"')


def _no_dry_run_of_status(request: Request) -> None:
    # The store writes status directly; a dry run that wrote would be worse than none.
    if _dry_run(request.query):
        raise BadRequest("dryRun is not supported on the status subresource")


def _deadline(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = int(text)
    except ValueError:
        raise BadRequest(f'timeoutSeconds: Invalid value: "{text}": must be an integer') from None
    if seconds > _INT64_MAX:  # Kubernetes' field is an int64; a float could not hold more
        raise BadRequest(f'timeoutSeconds: Invalid value: "{text}": out of range')
    return time.monotonic() + max(0, seconds)


def _checked_manager(manager: str) -> str:
    """Kubernetes' ValidateFieldManager: the name is kept in managedFields and
    shown by `get -o yaml`, so no control characters and no essays."""
    if len(manager) > MAX_FIELD_MANAGER:
        raise Invalid(f"fieldManager: Too long: may not be more than {MAX_FIELD_MANAGER} bytes")
    if not manager.isprintable():
        raise Invalid(
            f"fieldManager: Invalid value: {json.dumps(manager)}: "
            "must only contain printable characters"
        )
    return manager


def _manager(request: Request) -> str:
    """fieldManager, else the client's product name from User-Agent, as Kubernetes does."""
    explicit = request.query.get("fieldManager")
    if explicit:
        return _checked_manager(explicit)
    agent = (request.header("user-agent") or "").split("/", 1)[0].strip()
    return agent or "unknown"
