"""`GET /apis/pilotfish.dev/v1alpha1/analyze[?namespace=NS]`: istioctl analyze's
messages for the live configuration, as `istioctl analyze -o json` prints
them, for the dashboard and any HTTP client. Without `namespace`, every
namespace. Reads need no token, as other reads."""

from __future__ import annotations

from pilotfish.analysis import analyze, config_kinds
from pilotfish.api.errors import MethodNotAllowed
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.objects import Obj
from pilotfish.store.resources import ResourceStore

ANALYZE = "/apis/pilotfish.dev/v1alpha1/analyze"


class AnalyzeApi:
    """An `Api` extension answering ANALYZE; None for any other path."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"AnalyzeApi({self.store!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path != ANALYZE:
            return None
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not supported on {path}")
        namespace = request.query.get("namespace") or None
        messages = analyze(live_objects(self.store), stored=True)
        if namespace:
            messages = [m for m in messages if m.resource.namespace in ("", namespace)]
        return Response(200, encode({"messages": [m.to_dict() for m in messages]}))


def live_objects(store: ResourceStore) -> list[Obj]:
    """Every stored object analysis reads, in every namespace."""
    found: list[Obj] = []
    for kind in config_kinds():
        found += store.list(kind.group, kind.kind, None)[0]
    return found
