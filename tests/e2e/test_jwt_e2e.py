"""RequestAuthentication end to end: a JWKS server this test starts, the
control plane fetching it, real `pilotfish proxy` sidecars, and curl through
the caller's sidecar to the callee's inbound listener, where jwt_authn runs.

Mesh: productpage (a caller: sidecar only) and reviews v1 (an app behind its
sidecar, answering /echo with the request it got). The RequestAuthentication
selects reviews, so the reviews sidecar verifies tokens as Envoy would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import (
    REVIEWS_SERVICE,
    Backend,
    Response,
    Sidecar,
    SidecarMesh,
    curl,
    isolated_env,
)
from tests.agent.mesh_harness import wait_for
from tests.ports import free_port

from pilotfish.cli.commands import resolve

pytestmark = pytest.mark.slow

ISSUER = "https://auth.pilotfish.test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
REVIEWS = "http://reviews:9080/echo"


def jwks() -> str:
    keys = []
    for kid, alg, key in (("rsa-1", "RS256", RSA_KEY), ("ec-1", "ES256", EC_KEY)):
        public = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(key.public_key()))
        keys.append({**public, "kid": kid, "alg": alg})
    return json.dumps({"keys": keys})


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = jwks().encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def token(alg: str = "RS256", key: Any = None, **claims: Any) -> str:
    signer, kid = {"RS256": (RSA_KEY, "rsa-1"), "ES256": (EC_KEY, "ec-1")}[alg]
    payload = {"iss": ISSUER, "sub": "jason", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, key or signer, algorithm=alg, headers={"kid": kid})


def policy(jwks_uri: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
"""


class JwtMesh:
    def __init__(self, mesh: SidecarMesh, jwks_uri: str) -> None:
        self.mesh = mesh
        mesh.apply(REVIEWS_SERVICE)
        self.reviews, self.backend = mesh.workload(
            "reviews-v1-0", {"app": "reviews", "version": "v1"}, Backend("reviews-v1")
        )
        self.productpage: Sidecar = mesh.client("productpage-v1-0", {"app": "productpage"})
        for sidecar in mesh.sidecars:
            mesh.wait_serving(sidecar)
        mesh.apply(policy(jwks_uri))
        self.client = mesh._client()

    def get(self, headers: dict[str, str] | None = None, url: str = REVIEWS) -> Response:
        return curl(url, proxy=self.productpage.outbound_port, headers=headers)

    def policy_status(self) -> dict[str, Any]:
        obj = self.client.get(resolve("RequestAuthentication"), "reviews-jwt", "default")
        status: dict[str, Any] = obj.get("status") or {}
        return status


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtMesh]:
    tmp = tmp_path_factory.mktemp("jwt")
    env = isolated_env(tmp)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    sidecars = SidecarMesh(plane, tmp)
    try:
        plane.start()
        yield JwtMesh(sidecars, f"http://127.0.0.1:{server.server_address[1]}/keys")
    finally:
        sidecars.close()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def enforcing(mesh: JwtMesh) -> JwtMesh:
    """Once the keys are fetched (status Ready) and a valid token passes."""

    def ready() -> bool:
        conditions = mesh.policy_status().get("conditions") or [{}]
        return bool(conditions[0].get("status") == "True")

    wait_until(ready, 15, f"keys never fetched: {mesh.policy_status()}")
    # In force once a bad token is refused: a valid one passes without the
    # filter too, so only a refusal shows the sidecar has it.
    bad = {"Authorization": "Bearer not-a-token"}
    wait_until(lambda: mesh.get(bad).status == 401, 15, "the jwt_authn filter never applied")
    good = {"Authorization": f"Bearer {token()}"}
    wait_until(lambda: mesh.get(good).status == 200, 15, "a valid token never passed")
    return mesh


def test_a_valid_token_passes_and_its_claims_reach_the_app(enforcing: JwtMesh) -> None:
    for alg in ("RS256", "ES256"):
        tok = token(alg)
        got = enforcing.get({"Authorization": f"Bearer {tok}"})
        assert got.status == 200, got
        seen = json.loads(got.body)["headers"]
        assert "authorization" not in seen  # forwardOriginalToken is false
        assert seen["x-jwt-payload"] == tok.split(".")[1]
        assert seen["x-jwt-sub"] == "jason"


def test_no_token_passes_and_forged_claim_headers_are_dropped(enforcing: JwtMesh) -> None:
    got = enforcing.get({"x-jwt-sub": "admin", "x-jwt-payload": "e30"})
    assert got.status == 200, got
    seen = json.loads(got.body)["headers"]
    assert "x-jwt-sub" not in seen and "x-jwt-payload" not in seen


@pytest.mark.parametrize(
    ("make", "body"),
    [
        (lambda: token(exp=int(time.time()) - 120), "Jwt is expired"),
        (lambda: token(key=STRANGER), "Jwt verification fails"),
        (lambda: token(iss="https://elsewhere.test"), "Jwt issuer is not configured"),
        (lambda: "not-a-token", "Jwt is not in the form of Header.Payload.Signature"),
    ],
)
def test_a_bad_token_is_401_with_envoys_message(enforcing: JwtMesh, make: Any, body: str) -> None:
    got = enforcing.get({"Authorization": f"Bearer {make()}"})
    assert (got.status, got.body.decode()) == (401, body), got
    realm = 'Bearer realm="http://reviews:9080/echo", error="invalid_token"'
    assert got.header("www-authenticate") == realm


def test_status_reports_the_fetched_keys(enforcing: JwtMesh) -> None:
    (rule,) = enforcing.policy_status()["jwtRules"]
    assert rule["issuer"] == ISSUER and rule["keys"] == 2
    assert "lastFetched" in rule and "error" not in rule


def test_describe_shows_the_status_and_the_selected_workloads(enforcing: JwtMesh) -> None:
    done = enforcing.mesh.plane.cli("describe", "requestauthentication", "reviews-jwt")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "Selected Workloads:  default/reviews-v1\n" in text
    assert "reason: JwksResolved" in text and "keys: 2" in text
    assert "productpage" not in text


def test_an_unreachable_jwks_makes_its_tokens_fail_never_pass(enforcing: JwtMesh) -> None:
    """A second policy whose jwksUri nothing answers: its issuer's tokens are
    refused (the fake key), the first issuer's still pass, status says why."""
    dead = f"http://127.0.0.1:{free_port()}/keys"
    enforcing.mesh.apply(
        f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-down}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules: [{{issuer: "https://down.test", jwksUri: "{dead}"}}]
"""
    )
    try:
        down = {"Authorization": f"Bearer {token(iss='https://down.test')}"}
        wait_until(
            lambda: "down.test" in json.dumps(enforcing.reviews.config_dump()),
            15,
            "the second policy never reached the sidecar",
        )
        # Through productpage's sidecar, whose connection to reviews' sidecar was
        # opened under the old listener: that one drains, the next is new.
        kid_mismatch = "Jwks doesn't have key to match kid or alg from Jwt"
        wait_until(
            lambda: enforcing.get(down).body.decode() == kid_mismatch,
            5,
            "the pooled connection kept the old listener config",
        )
        # Straight to the inbound listener as well.
        inbound = f"http://127.0.0.1:{enforcing.reviews.inbound_port}/echo"
        got = curl(inbound, headers={**down, "Host": "reviews"})
        assert (got.status, got.body.decode()) == (401, kid_mismatch), got
        good = {"Authorization": f"Bearer {token()}", "Host": "reviews"}
        assert curl(inbound, headers=good).status == 200
        kind = resolve("RequestAuthentication")

        def condition() -> Any:
            status = enforcing.client.get(kind, "reviews-down", "default").get("status") or {}
            return (status.get("conditions") or [None])[0]

        cond = wait_for(condition, 10, "no status written")
        assert (cond["status"], cond["reason"]) == ("False", "JwksUnavailable")
        assert cond["message"].startswith(f"issuer https://down.test: fetching {dead}: ")
        assert cond["message"].endswith("(tokens of this issuer fail)")
    finally:
        enforcing.mesh.delete("requestauthentication", "reviews-down")
