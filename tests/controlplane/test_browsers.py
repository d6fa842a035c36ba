"""A web page in the user's browser cannot use the control plane's anonymous
access: not to approve a canary through the load tester's gates (a
cross-site POST needs no CORS preflight), nor to read the API through DNS
rebinding. Real HTTP requests, with the headers a browser sends."""

from __future__ import annotations

import http.client
import json

from pilotfish.controlplane.main import ControlPlane

GATE = {"name": "reviews", "namespace": "default"}


def _send(
    plane: ControlPlane, method: str, path: str, body: object = None, **headers: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(plane.server.host, plane.server.port, timeout=5)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.putrequest(method, path, skip_host="Host" in headers)
        for name, value in {"Content-Type": "text/plain", **headers}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(data or b"")))
        conn.endheaders(data)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _gate_open(plane: ControlPlane) -> bool:
    return _send(plane, "POST", "/loadtester/gate/check", GATE)[0] == 200


def test_a_cross_site_page_cannot_open_a_gate(plane: ControlPlane) -> None:
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    ):
        status, body = _send(plane, "POST", "/loadtester/gate/open", GATE, **headers)
        assert status == 401, (headers, body)
        assert json.loads(body)["reason"] == "Unauthorized"
        assert not _gate_open(plane)
    assert _send(plane, "POST", "/loadtester/gate/open", GATE)[0] == 202  # a webhook: no Origin
    assert _gate_open(plane)


def test_dns_rebinding_cannot_read_the_api(plane: ControlPlane) -> None:
    port = plane.server.port
    path = "/api/v1/namespaces/default/configmaps"
    status, body = _send(plane, "GET", path, Host=f"evil.example:{port}")
    assert status == 401 and b"evil.example" in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert _send(plane, "GET", path, Host=host)[0] == 200, host


def test_the_token_is_enough_wherever_the_request_comes_from(plane: ControlPlane) -> None:
    token = (plane.data_dir / "token").read_text().strip()
    status, _ = _send(
        plane,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        Host="controlplane.example:15080",
        Origin="https://dashboard.example",
        Authorization=f"Bearer {token}",
    )
    assert status == 200
