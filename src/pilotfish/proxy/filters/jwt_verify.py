"""JWT parsing and verification as Envoy's jwt_verify_lib does it, on PyJWT's
key parsing and signature algorithms (which run on `cryptography`).

    keys = parse_jwks(text)                 # once per config: JwksError if bad
    jwt = parse_jwt(token)                  # JwtError: format, header, payload
    verify_time(jwt, now, skew)             # JwtError: expired / not yet valid
    verify_signature(jwt, keys)             # JwtError: kid/alg mismatch, bad signature

Each failure carries Envoy's status string (jwt_verify_lib `getStatusString`),
which is what the 401 body says.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PyJWT and cryptography are imported by the first key or token
    # that needs them: ~14 MiB a sidecar without a JWT rule never uses
    from jwt.algorithms import Algorithm

# jwt_verify_lib's status strings.
MISSING = "Jwt is missing"
NOT_YET_VALID = "Jwt not yet valid"
EXPIRED = "Jwt is expired"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature"
HEADER_PARSE = "Jwt header is an invalid Base64url input or an invalid JSON"
HEADER_BAD_ALG = "Jwt header [alg] field is not a string"
HEADER_UNKNOWN_ALG = "Jwt header [alg] field value is invalid"
HEADER_BAD_KID = "Jwt header [kid] field is not a string"
PAYLOAD_PARSE = "Jwt payload is an invalid Base64 or an invalid JSON"
SIGNATURE_PARSE = "Jwt signature is an invalid Base64"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
VERIFICATION_FAIL = "Jwt verification fails"
KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_PARSE = "Jwks is an invalid JSON"
JWKS_NO_KEYS = "Jwks does not have [keys] field"
JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"

# The key type each algorithm family needs; EC keys must also be on the right curve.
_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "HS": "oct", "Ed": "OKP"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
    | {"HS256", "HS384", "HS512", "EdDSA"}
)
_NUMERIC_CLAIMS = ("exp", "nbf", "iat")


class JwtError(ValueError):
    """A token Envoy would reject; the message is Envoy's status string."""


class JwksError(ValueError):
    """A JWKS Envoy would refuse to load."""


@dataclass(frozen=True, slots=True)
class Key:
    """One usable JWKS key: what matching reads, and the parsed key object."""

    kid: str | None
    alg: str | None
    kty: str
    crv: str | None
    key: Any

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r}, kty={self.kty}, alg={self.alg})"

    def fits(self, alg: str, kid: str | None) -> bool:
        """jwt_verify_lib's matching: same kid when the token names one, the
        key's alg (if set) equal to the token's, and a key type (and curve) the
        algorithm can use."""
        if kid is not None and self.kid is not None and kid != self.kid:
            return False
        if self.alg is not None and self.alg != alg:
            return False
        if _FAMILY.get(alg[:2]) != self.kty:
            return False
        return alg not in _CURVES or self.crv in (None, _CURVES[alg])


@dataclass(frozen=True, slots=True)
class Jwt:
    """A parsed token: its header fields, payload, and what the signature covers."""

    alg: str
    kid: str | None
    payload: dict[str, Any]
    payload_b64: str  # the payload segment as sent: forward_payload_header's value
    signing_input: bytes
    signature: bytes

    @property
    def issuer(self) -> str:
        return str(self.payload.get("iss", ""))

    @property
    def audiences(self) -> list[str]:
        aud = self.payload.get("aud")
        if aud is None:
            return []
        return [aud] if isinstance(aud, str) else list(aud)


def parse_jwks(text: str) -> tuple[Key, ...]:
    """A JWKS document -> its usable keys. Keys pilotfish cannot use are
    skipped, as Envoy skips them; none usable at all is an error."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise JwksError(JWKS_PARSE) from e
    if not isinstance(doc, dict) or "keys" not in doc:
        raise JwksError(JWKS_NO_KEYS)
    if not isinstance(doc["keys"], list):
        raise JwksError(JWKS_BAD_KEYS)
    keys = [k for k in map(_parse_key, doc["keys"]) if k is not None]
    if not keys:
        raise JwksError(JWKS_NO_VALID_KEYS)
    return tuple(keys)


def _parse_key(jwk: Any) -> Key | None:
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str):
        return None
    import jwt as pyjwt

    try:
        parsed = pyjwt.PyJWK(jwk)
    except (pyjwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    kid, alg, crv = jwk.get("kid"), jwk.get("alg"), jwk.get("crv")
    return Key(
        kid if isinstance(kid, str) else None,
        alg if isinstance(alg, str) else None,
        str(jwk["kty"]),
        crv if isinstance(crv, str) else None,
        parsed.key,
    )


def parse_jwt(token: str) -> Jwt:
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError(BAD_FORMAT)
    header = _json_segment(parts[0], HEADER_PARSE)
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise JwtError(HEADER_BAD_ALG)
    if alg not in ALGORITHMS:
        raise JwtError(HEADER_UNKNOWN_ALG)
    if kid is not None and not isinstance(kid, str):
        raise JwtError(HEADER_BAD_KID)
    payload = _json_segment(parts[1], PAYLOAD_PARSE)
    _check_claims(payload)
    try:
        signature = _b64(parts[2])
    except ValueError as e:
        raise JwtError(SIGNATURE_PARSE) from e
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    return Jwt(alg, kid, payload, parts[1], signing_input, signature)


def _check_claims(payload: dict[str, Any]) -> None:
    """jwt_verify_lib refuses a payload whose registered claims have the wrong types."""
    for name in ("iss", "sub", "jti"):
        if name in payload and not isinstance(payload[name], str):
            raise JwtError(PAYLOAD_PARSE)
    aud = payload.get("aud")
    if not (aud is None or isinstance(aud, str) or _strings(aud)):
        raise JwtError(PAYLOAD_PARSE)
    for name in _NUMERIC_CLAIMS:
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise JwtError(PAYLOAD_PARSE)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _json_segment(segment: str, error: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64(segment))
    except ValueError as e:
        raise JwtError(error) from e
    if not isinstance(value, dict):
        raise JwtError(error)
    return value


def _b64(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError(str(e)) from e


def verify_time(jwt: Jwt, now: float, skew: int) -> None:
    nbf, exp = jwt.payload.get("nbf"), jwt.payload.get("exp")
    if nbf is not None and nbf > now + skew:
        raise JwtError(NOT_YET_VALID)
    if exp is not None and exp < now - skew:
        raise JwtError(EXPIRED)


_ALGORITHM_CACHE: dict[str, Algorithm] = {}


def verify_signature(jwt: Jwt, keys: tuple[Key, ...]) -> None:
    """Any fitting key that verifies will do; no fitting key is its own error."""
    fitting = [k for k in keys if k.fits(jwt.alg, jwt.kid)]
    if not fitting:
        raise JwtError(KID_ALG_MISMATCH)
    algorithm = _ALGORITHM_CACHE.get(jwt.alg)
    if algorithm is None:
        import jwt as pyjwt

        algorithm = _ALGORITHM_CACHE[jwt.alg] = pyjwt.get_algorithm_by_name(jwt.alg)
    for key in fitting:
        try:
            if algorithm.verify(jwt.signing_input, key.key, jwt.signature):
                return
        except (ValueError, TypeError):
            continue
    raise JwtError(VERIFICATION_FAIL)
