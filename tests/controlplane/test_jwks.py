"""The JWKS resolver: its pure steps (what is due, what a fetch leaves, the
status a policy gets), `fetch` against a real local server, and the running
control plane keeping keys and status current."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.agent.mesh_harness import wait_for

from pilotfish.controlplane.jwks import (
    JwksState,
    Timing,
    due,
    fetch,
    policy_status,
    prune,
    record,
    wanted,
)
from pilotfish.controlplane.main import ControlPlane
from pilotfish.store.types import Key

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps(
    {"keys": [json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(KEY.public_key()))]}
)
URI = "http://jwks.test/keys"
TIMING = Timing(refresh_s=1200, retry_s=1)


def policy(*rules: dict[str, Any], status: Any = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "default"},
        "spec": {"jwtRules": list(rules)},
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_wanted_uris_skip_inline_keys_and_take_the_shortest_timeout() -> None:
    policies = [
        policy({"issuer": "a", "jwksUri": URI, "timeout": "2s"}, {"issuer": "b", "jwksUri": URI}),
        policy({"issuer": "c", "jwksUri": "http://other/keys", "jwks": JWKS}),
    ]
    assert wanted(policies) == {URI: 2.0}


def test_a_uri_is_fetched_when_new_then_every_refresh_interval() -> None:
    state = JwksState()
    assert due(state, [URI], 0, TIMING) == [URI]
    state = record(state, URI, 0, JWKS, "")
    assert state.keys() == {URI: JWKS}
    assert due(state, [URI], 1199, TIMING) == []
    assert due(state, [URI], 1200, TIMING) == [URI]


def test_a_failure_keeps_the_last_good_keys_and_backs_off() -> None:
    state = record(JwksState(), URI, 0, JWKS, "")
    state = record(state, URI, 1200, None, f"fetching {URI}: timed out")
    assert state.keys() == {URI: JWKS}
    assert due(state, [URI], 1200.5, TIMING) == []
    assert due(state, [URI], 1201, TIMING) == [URI]
    state = record(state, URI, 1201, "not json", "")  # a bad body is a failure too
    assert state.keys() == {URI: JWKS}
    assert "unusable JWKS: Jwks is an invalid JSON" in state.entries[URI].error
    assert due(state, [URI], 1202.5, TIMING) == []  # second failure: 2 s
    assert due(state, [URI], 1203, TIMING) == [URI]
    state = record(state, URI, 1203, JWKS, "")
    assert state.entries[URI].error == "" and state.entries[URI].failures == 0


def test_prune_forgets_uris_no_policy_names() -> None:
    state = record(JwksState(), URI, 0, JWKS, "")
    assert prune(state, []).keys() == {}


def condition(status: dict[str, Any]) -> dict[str, Any]:
    (cond,) = status["conditions"]
    assert cond["type"] == "Ready"
    return dict(cond)


def test_status_reports_keys_and_each_kind_of_failure() -> None:
    state = record(JwksState(), URI, 0, JWKS, "")
    ok = policy_status(policy({"issuer": "a", "jwksUri": URI}), state, 0)
    assert condition(ok)["status"] == "True"
    assert ok["jwtRules"] == [
        {"issuer": "a", "jwksUri": URI, "keys": 1, "lastFetched": "1970-01-01T00:00:00Z"}
    ]
    state = record(state, URI, 10, None, f"fetching {URI}: timed out")
    failing = condition(policy_status(policy({"issuer": "a", "jwksUri": URI}), state, 10))
    assert failing["status"] == "False" and failing["reason"] == "JwksUnavailable"
    assert failing["message"] == (f"issuer a: fetching {URI}: timed out (last good keys kept)")
    never = record(JwksState(), URI, 0, None, f"fetching {URI}: HTTP 404")
    message = condition(policy_status(policy({"issuer": "a", "jwksUri": URI}), never, 0))["message"]
    assert message == f"issuer a: fetching {URI}: HTTP 404 (tokens of this issuer fail)"
    bad_inline = policy({"issuer": "b", "jwks": '{"keys": [{"kty": "RSA"}]}'})
    message = condition(policy_status(bad_inline, JwksState(), 0))["message"]
    assert message == "issuer b: inline jwks is unusable: Jwks doesn't have any valid public key"
    no_source = condition(policy_status(policy({"issuer": "c"}), JwksState(), 0))
    assert no_source["status"] == "False" and "OpenID" in no_source["message"]


def test_the_transition_time_moves_only_with_the_status() -> None:
    state = record(JwksState(), URI, 0, JWKS, "")
    first = policy_status(policy({"issuer": "a", "jwksUri": URI}), state, 0)
    later = policy_status(policy({"issuer": "a", "jwksUri": URI}, status=first), state, 500)
    assert later == first


class _Keys(BaseHTTPRequestHandler):
    body = JWKS.encode()
    status = 200
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(type(self).delay)
        self.send_response(type(self).status)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, type[_Keys]]]:
    handler = type("Keys", (_Keys,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/keys", handler
    server.shutdown()
    server.server_close()


def test_fetch_from_a_real_server(jwks_server: tuple[str, type[_Keys]]) -> None:
    uri, handler = jwks_server
    assert fetch(uri, 5) == (JWKS, "")
    handler.status = 503
    assert fetch(uri, 5) == (None, f"fetching {uri}: HTTP 503")
    handler.status, handler.delay = 200, 1.0
    assert fetch(uri, 0.2) == (None, f"fetching {uri}: timed out")
    assert fetch("file:///etc/passwd", 1)[1] == (
        "file:///etc/passwd: only http and https jwksUri can be fetched"
    )


def test_the_control_plane_fetches_keeps_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jwks_server: tuple[str, type[_Keys]]
) -> None:
    uri, handler = jwks_server
    monkeypatch.setenv("PILOT_JWT_PUB_KEY_REFRESH_INTERVAL", "1s")
    monkeypatch.setenv("PILOT_JWT_PUB_KEY_REFRESH_INTERVAL_ON_FAILURE", "200ms")
    plane = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml")
    try:
        assert plane.mesh is not None
        plane.store.apply(policy({"issuer": "a", "jwksUri": uri, "timeout": "300ms"}), manager="t")
        key = Key("security.istio.io", "RequestAuthentication", "default", "jwt")

        def ready() -> str:
            return str(
                condition(
                    plane.store.get(key).get("status") or {"conditions": [{"type": "Ready"}]}
                ).get("status", "")
            )

        wait_for(lambda: ready() == "True", 15, "keys never fetched")
        assert plane.mesh.snapshot().jwks == {uri: JWKS}
        handler.delay = 1.0  # the JWKS URL now times out: reported, keys kept
        wait_for(lambda: ready() == "False", 15, "the timeout never reported")
        message = condition(plane.store.get(key)["status"])["message"]
        assert message == f"issuer a: fetching {uri}: timed out (last good keys kept)"
        assert plane.mesh.snapshot().jwks == {uri: JWKS}
    finally:
        handler.delay = 0
        plane.close()


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_target_refs_are_gateway_api_and_select_nothing(version: str) -> None:
    """Istio's validation accepts targetRefs (its conformance cases do), so the
    policy is stored; it applies to no sidecar, and analyze and status say why."""
    from pilotfish.analysis import analyze
    from pilotfish.api.validation import validate
    from pilotfish.translate.jwt import applicable

    obj = policy({"issuer": "a", "jwksUri": URI})
    obj["apiVersion"] = f"security.istio.io/{version}"
    obj["spec"]["targetRefs"] = [{"group": "", "kind": "Service", "name": "reviews"}]
    assert validate(obj) == []
    assert applicable([obj], "default", {}) == []
    (warning,) = [m.text for m in analyze([obj]) if m.type.code == "PF0005"]
    assert "Kubernetes Gateway API" in warning and "applies to no workload" in warning
    cond = condition(policy_status(obj, record(JwksState(), URI, 0, JWKS, ""), 0))
    assert (cond["status"], cond["reason"]) == ("False", "TargetRefsUnsupported")
    assert cond["message"] == warning


def test_analyze_warns_of_rules_whose_tokens_cannot_pass() -> None:
    from pilotfish.analysis import analyze

    def jwt_messages(obj: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m.type.code, m.text) for m in analyze([obj]) if m.type.code.startswith("PF000")]

    state = record(JwksState(), URI, 0, None, f"fetching {URI}: HTTP 404")
    failing = policy({"issuer": "a", "jwksUri": URI}, {"issuer": "b"})
    failing["status"] = policy_status(failing, state, 0)
    (missing, unavailable) = jwt_messages(failing)
    assert missing == (
        "PF0003",
        'jwtRules[1] of issuer "b" has neither jwks nor jwksUri: its tokens fail (keys are '
        "not discovered from the issuer's OpenID configuration).",
    )
    assert unavailable[0] == "PF0004" and "issuer a: fetching" in unavailable[1]
    assert "HTTP 404" in unavailable[1]
    assert jwt_messages(policy({"issuer": "a", "jwks": JWKS})) == []


def test_the_resolver_keeps_the_rest_of_the_status() -> None:
    """Analysis writes status.validationMessages; the resolver must not erase it
    (nor rewrite its own part when nothing changed), or the two would fight."""
    from pilotfish.controlplane.jwks import JwksResolver

    other = {"validationMessages": [{"type": {"code": "IST0101"}}]}
    stored = policy({"issuer": "a", "jwksUri": URI}, status=other)
    writes: list[dict[str, Any]] = []

    def write(obj: dict[str, Any], status: dict[str, Any]) -> None:
        writes.append(status)
        obj["status"] = status

    resolver = JwksResolver(
        lambda: [stored],
        lambda keys: None,
        write,
        clock=lambda: 0.0,
        timing=TIMING,
        fetcher=lambda uri, timeout: (JWKS, ""),
    )
    resolver.step()
    resolver.step()
    assert len(writes) == 1
    assert writes[0]["validationMessages"] == other["validationMessages"]
    assert writes[0]["conditions"][0]["reason"] == "JwksResolved"
