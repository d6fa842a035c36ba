"""Objects and a request helper shared by the control plane tests."""

from __future__ import annotations

import json
from typing import Any

from pilotfish.controlplane.api import Api, Request, Response

TOKEN = "test-token"
VS_PATH = "/apis/networking.istio.io/v1/namespaces/default/virtualservices"


def virtual_service(
    name: str = "reviews", hosts: list[str] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, **meta},
        "spec": {
            "hosts": hosts or ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}}]}],
        },
    }


def service(name: str = "reviews", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, **meta},
        "spec": {"ports": [{"name": "http", "port": 9080}]},
    }


class Caller:
    """Requests to an Api as the HTTP shell would make them."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def __call__(
        self,
        method: str,
        target: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        content_type: str = "application/json",
        peer: str = "127.0.0.1",
    ) -> Response:
        headers = {"Content-Type": content_type}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        raw = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )
        return self.api.handle(Request.of(method, target, headers, raw, peer))

    def apply(
        self,
        obj: dict[str, Any],
        path: str,
        query: str = "fieldManager=alice",
        token: str | None = TOKEN,
    ) -> Response:
        return self(
            "PATCH",
            f"{path}?{query}",
            obj,
            token=token,
            content_type="application/apply-patch+yaml",
        )
