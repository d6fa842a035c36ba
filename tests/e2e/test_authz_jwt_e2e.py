"""Istio's authorization tasks, end to end on a mesh with mutual TLS (on by
default) and a control plane started with `--trust-domain corp.example`:
curl through a caller's sidecar, real `pilotfish proxy` sidecars holding
certificates from the control plane's CA, and a JWKS server this test starts.

- HTTP traffic (istio.io/latest/docs/tasks/security/authorization/authz-http/):
  allow-nothing, then reviews allowed to the productpage service account by
  principal, written `cluster.local/ns/default/sa/bookinfo-productpage` as in
  the task: cluster.local names the mesh's own trust domain, here corp.example.
- JWT (.../authorization/authz-jwt/): a RequestAuthentication and a policy
  requiring a request principal, then a claim-based `when`.
- A JWKS that times out or serves a malformed key: status and analyze say
  so, the last good keys stay, an issuer with no good keys has its tokens
  fail.

Mesh: productpage-v1 (a caller: sidecar only, service account
bookinfo-productpage) and reviews-v1 (an app behind its sidecar).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import REVIEWS_SERVICE, Backend, Response, Sidecar, SidecarMesh, curl
from tests.ports import free_port

from pilotfish.cli.commands import resolve

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "corp.example"
ISSUER = "testing@secure.istio.io"  # the issuer of Istio's sample tokens
SUBJECT = "testing@secure.istio.io"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
REVIEWS = "http://reviews:9080/echo"
DENIED = (403, "RBAC: access denied")
KID_MISMATCH = (401, "Jwks doesn't have key to match kid or alg from Jwt")  # no usable key


def jwks() -> str:
    public = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(KEY.public_key()))
    return json.dumps({"keys": [{**public, "kid": "rsa-1", "alg": "RS256"}]})


MALFORMED = json.dumps({"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "!!", "e": "AQAB"}]})


class Keys(BaseHTTPRequestHandler):
    """/keys: the good keys unless `mode` says otherwise ("slow": answers
    after the rule's timeout; "malformed": a key that is not one);
    /malformed and /slow: always so."""

    mode: ClassVar[str] = "good"

    def do_GET(self) -> None:
        mode = type(self).mode if self.path == "/keys" else self.path.strip("/")
        if mode == "slow":
            time.sleep(2)
        body = (MALFORMED if mode == "malformed" else jwks()).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # a slow answer its caller gave up on
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def token(key: Any = KEY, iss: str = ISSUER, **claims: Any) -> str:
    payload = {"iss": iss, "sub": SUBJECT, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "rsa-1"})


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def authorization_policy(name: str, spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec: {spec}
"""


def request_authentication(name: str, issuer: str, uri: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules: [{{issuer: "{issuer}", jwksUri: "{uri}", timeout: 500ms}}]
"""


@dataclass
class World:
    mesh: SidecarMesh
    productpage: Sidecar
    reviews: Sidecar
    keys_url: str
    keys: type[Keys]  # the JWKS server's handler: set `mode` to break it

    def get(self, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
        """Through productpage's sidecar: mutual TLS to reviews' sidecar."""
        return curl(REVIEWS, "-X", method, proxy=self.productpage.outbound_port, headers=headers)

    def seen(self, headers: dict[str, str] | None = None) -> tuple[int, str]:
        got = self.get(headers)
        return got.status, got.text if got.status != 200 else ""

    def direct(self) -> Response:
        """Plaintext to reviews' inbound port (PERMISSIVE): no peer identity."""
        url = f"http://127.0.0.1:{self.reviews.inbound_port}/echo"
        return curl(url, headers={"Host": "reviews"})

    def authn_status(self, name: str) -> dict[str, Any]:
        obj = self.mesh._client().get(resolve("RequestAuthentication"), name, "default")
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def ready(self, name: str) -> dict[str, Any]:
        (condition,) = self.authn_status(name).get("conditions") or [{}]
        return dict(condition)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("authz-jwt")
    env = {
        **os.environ,
        "HOME": str(tmp / "home"),
        "PILOTFISH_CONFIG": str(tmp / "config.yaml"),
        # istiod's knobs: fetch the keys every second, retry failures fast
        "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL": "1s",
        "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL_ON_FAILURE": "200ms",
    }
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    handler = type("TestKeys", (Keys,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plane = XdsControlPlane(
        tmp / "data", free_port(), env, xds_port=free_port(), args=("--trust-domain", TRUST_DOMAIN)
    )
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(REVIEWS_SERVICE)
        reviews, _ = mesh.workload("reviews-v1-0", {"app": "reviews"}, Backend("reviews-v1"))
        productpage = mesh.client("productpage-v1-0", {"app": "productpage"})
        for sidecar in (reviews, productpage):
            mesh.wait_serving(sidecar)
            wait_until(sidecar.has_certificate, 20, "no certificate")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        world = World(mesh, productpage, reviews, url, handler)
        wait_until(lambda: world.get().status == 200, 15, "reviews never answered")
        yield world
    finally:
        mesh.close()
        server.shutdown()
        server.server_close()


def reviews_counters(world: World, suffix: str) -> int:
    """The sum of reviews' sidecar counters ending in `suffix` (one per inbound
    connection manager, `http.<stat_prefix>.<suffix>`)."""
    return sum(v for k, v in world.reviews.counters().items() if k.endswith("." + suffix))


def test_http_task_by_service_account_principal(world: World) -> None:
    mesh = world.mesh
    mesh.apply(authorization_policy("allow-nothing", "{}"))
    try:
        wait_until(lambda: world.seen() == DENIED, 15, "allow-nothing not enforced")
        viewer = """
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {methods: ["GET"]}}]
"""
        mesh.apply(authorization_policy("reviews-viewer", viewer))
        wait_until(lambda: world.get().status == 200, 15, "productpage's identity not allowed")
        # The principal checked is the peer certificate's, in the mesh's trust domain.
        dump = json.dumps(world.reviews.config_dump())
        assert f"spiffe://{TRUST_DOMAIN}/ns/default/sa/bookinfo-productpage" in dump
        assert (world.get(method="POST").status, world.get(method="POST").text) == DENIED
        plain = world.direct()  # no certificate, so no principal
        assert (plain.status, plain.text) == DENIED
        mesh.apply(authorization_policy("reviews-viewer", viewer.replace("productpage", "ratings")))
        wait_until(lambda: world.seen() == DENIED, 15, "another identity still allowed")
    finally:
        mesh.delete("authorizationpolicy", "reviews-viewer")
        mesh.delete("authorizationpolicy", "allow-nothing")
    wait_until(lambda: world.get().status == 200, 15, "the policies were not removed")
    assert reviews_counters(world, "rbac.allowed") >= 1
    assert reviews_counters(world, "rbac.denied") >= 3


def test_jwt_task_requires_a_request_principal_then_a_claim(world: World) -> None:
    mesh = world.mesh
    require_jwt = """
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"""
    mesh.apply(request_authentication("jwt-example", ISSUER, f"{world.keys_url}/keys"))
    mesh.apply(authorization_policy("require-jwt", require_jwt))
    good = bearer(token())
    try:
        wait_until(lambda: world.seen() == DENIED, 15, "a token is not required")
        wait_until(lambda: world.get(good).status == 200, 15, "a valid token never passed")
        allowed = reviews_counters(world, "jwt_authn.allowed")
        denied = reviews_counters(world, "jwt_authn.denied")
        assert world.seen(bearer(token(key=STRANGER))) == (401, "Jwt verification fails")
        assert world.seen() == DENIED  # a missing token passes jwt_authn, not RBAC
        assert reviews_counters(world, "jwt_authn.denied") == denied + 1
        assert reviews_counters(world, "jwt_authn.allowed") == allowed + 1

        by_group = f"""
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/{SUBJECT}"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: ["group1"]}}]
"""
        mesh.apply(authorization_policy("require-jwt", by_group))
        group1 = bearer(token(groups=["group1", "group2"]))
        wait_until(lambda: world.seen(good) == DENIED, 15, "the claim is not required")
        assert world.get(group1).status == 200
        assert world.seen(bearer(token(groups=["group2"]))) == DENIED
    finally:
        mesh.delete("authorizationpolicy", "require-jwt")
        mesh.delete("requestauthentication", "jwt-example")
    wait_until(lambda: world.get().status == 200, 15, "the policies were not removed")


def analyze_lines(world: World) -> list[str]:
    done = world.mesh.plane.cli("analyze")
    return [line for line in done.stdout.splitlines() if "[PF0004]" in line]


def test_a_jwks_that_times_out_or_is_malformed(world: World) -> None:
    """The last good keys stay (good tokens pass) while status and analyze say
    what is wrong; an issuer that never had good keys has every token fail."""
    mesh = world.mesh
    mesh.apply(request_authentication("jwt-example", ISSUER, f"{world.keys_url}/keys"))
    good = bearer(token())
    try:
        wait_until(lambda: world.ready("jwt-example").get("status") == "True", 15, "no keys")
        for mode, why in (("slow", "timed out"), ("malformed", "returned an unusable JWKS")):
            world.keys.mode = mode

            def reported(why: str = why) -> bool:
                message = str(world.ready("jwt-example").get("message", ""))
                return why in message and message.endswith("(last good keys kept)")

            wait_until(reported, 15, f"{mode}: not reported: {world.ready('jwt-example')}")
            assert world.get(good).status == 200  # the last good keys
            assert world.seen(bearer(token(key=STRANGER))) == (401, "Jwt verification fails")
            (line,) = analyze_lines(world)
            assert "RequestAuthentication default/jwt-example" in line and why in line
            world.keys.mode = "good"
            wait_until(lambda: world.ready("jwt-example").get("status") == "True", 15, "not back")
        assert analyze_lines(world) == []

        # Issuers whose keys never came: their tokens fail, never pass.
        for name, path in (("never-good", "malformed"), ("never-answers", "slow")):
            issuer = f"https://{name}.test"
            mesh.apply(request_authentication(name, issuer, f"{world.keys_url}/{path}"))
            tok = bearer(token(iss=issuer))
            wait_until(
                lambda t=tok: world.seen(t) == KID_MISMATCH, 15, f"{name}: tokens not refused"
            )
            wait_until(
                lambda n=name: str(world.ready(n).get("message", "")).endswith(
                    "(tokens of this issuer fail)"
                ),
                15,
                f"{name}: no status",
            )
        assert world.get(good).status == 200
        assert len(analyze_lines(world)) == 2
    finally:
        world.keys.mode = "good"
        for name in ("jwt-example", "never-good", "never-answers"):
            mesh.delete("requestauthentication", name)
