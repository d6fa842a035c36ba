"""The security config of the authorization rows: one ALLOW
AuthorizationPolicy of ten rules and one RequestAuthentication, translated by
the control plane's own functions (translate/authz.py, translate/jwt.py) into
the HTTP filters a sidecar's inbound chain gets, and a token they accept.

The load's requests (GET /tiny, GET /api/v1/reviews/0) match only the tenth
rule; with `require_jwt` that rule also asks for a request principal
(`requestPrincipals: ["*"]`, Istio's "require a JWT"), so the RBAC filter
reads what jwt_authn verified.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.json_format import MessageToDict

from pilotfish.translate.authz import AuthzSettings, translate_rbac_http
from pilotfish.translate.jwt import translate_jwt_filter

ISSUER = "https://auth.bench.test"
# A fixed key, not a generated one: key generation's cost varies from run to
# run, and proxy_path.py --instructions subtracts two runs' counts.
_KEY = ec.derive_private_key(0x5EC0_0D15_BE4C_4A11_2026_1207, ec.SECP256R1())
_KID = "bench-1"
_ALG = "ES256"


def _as_json(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(MessageToDict(message)))
    return out


def ten_rule_allow_filter(require_jwt: bool = False) -> dict[str, Any]:
    """The RBAC HTTP filter of one ALLOW policy of ten rules (method and path
    each); requests match only the tenth."""
    rules: list[dict[str, Any]] = [
        {"to": [{"operation": {"methods": ["PUT"], "paths": [f"/admin/{i}/*"]}}]} for i in range(9)
    ]
    last: dict[str, Any] = {"to": [{"operation": {"methods": ["GET", "POST"], "paths": ["/*"]}}]}
    if require_jwt:
        last["from"] = [{"source": {"requestPrincipals": ["*"]}}]
    rules.append(last)
    policy = {"metadata": {"name": "ten-rules", "namespace": "bench"}, "spec": {"rules": rules}}
    [rbac] = translate_rbac_http([policy], AuthzSettings())
    return _as_json(rbac)


def jwks() -> str:
    public = json.loads(jwt.get_algorithm_by_name(_ALG).to_jwk(_KEY.public_key()))
    return json.dumps({"keys": [{**public, "kid": _KID, "alg": _ALG}]})


def jwt_filter() -> dict[str, Any]:
    """The jwt_authn HTTP filter of one RequestAuthentication (ES256, inline keys,
    as istiod sends a fetched jwksUri)."""
    policy = {
        "metadata": {"name": "bench-jwt", "namespace": "bench"},
        "spec": {"jwtRules": [{"issuer": ISSUER, "jwks": jwks()}]},
    }
    found = translate_jwt_filter([policy], {})
    assert found is not None
    return _as_json(found)


def token(lifetime_s: int = 3600) -> str:
    """A valid ES256 token of the issuer, good for `lifetime_s`."""
    claims = {"iss": ISSUER, "sub": "bench-user", "exp": int(time.time()) + lifetime_s}
    return jwt.encode(claims, _KEY, algorithm=_ALG, headers={"kid": _KID})
