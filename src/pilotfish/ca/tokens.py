"""Service account tokens: what a sidecar shows the CA to prove which
identity it may hold, as a Kubernetes service account token (a JWT) proves
it to istiod.

The control plane mints them (TokenRequest, `pilotfish create token`) and
signs them with HMAC-SHA256 under a key of its own in the data directory
(0600); only the control plane verifies them, so a shared secret is enough.
The claims are Kubernetes': `sub` system:serviceaccount:NS:SA and the
`kubernetes.io` block, audience `istio-ca`, an expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from pilotfish.config import write_private

KEY_FILE = "sa-token-key"
ISSUER = "pilotfish"
AUDIENCE = "istio-ca"  # what Istio asks the kubelet for, for the CA
SUBJECT_PREFIX = "system:serviceaccount:"
DEFAULT_TTL_S = 3600  # Kubernetes' default for a TokenRequest
MIN_TTL_S = 600  # Kubernetes refuses shorter ones
_HEADER = {"alg": "HS256", "typ": "JWT"}


class TokenError(ValueError):
    """The token cannot be used; the message says why (never the token)."""


@dataclass(frozen=True)
class ServiceAccountTokens:
    key: bytes = field(repr=False)

    def mint(self, namespace: str, service_account: str, ttl_s: int, now: float) -> str:
        claims = {
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "sub": f"{SUBJECT_PREFIX}{namespace}:{service_account}",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + ttl_s,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
        }
        signing_input = f"{_b64(json.dumps(_HEADER))}.{_b64(json.dumps(claims))}"
        return f"{signing_input}.{_sign(self.key, signing_input)}"

    def verify(self, token: str, now: float | None = None) -> tuple[str, str]:
        """The (namespace, service account) the token is bound to."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a service account token (a JWT has three parts)")
        expected = _sign(self.key, f"{parts[0]}.{parts[1]}")
        if not hmac.compare_digest(expected.encode(), parts[2].encode()):
            raise TokenError(
                "the token's signature is not valid (not issued by this control plane)"
            )
        try:
            claims = json.loads(_unb64(parts[1]))
            expires, subject = int(claims["exp"]), str(claims["sub"])
            audiences = list(claims.get("aud") or [])
        except (ValueError, KeyError, TypeError) as e:
            raise TokenError(f"the token's claims cannot be read: {e}") from e
        if (now if now is not None else time.time()) >= expires:
            raise TokenError("the token has expired")
        if AUDIENCE not in audiences:
            raise TokenError(f"the token is not for audience {AUDIENCE}")
        namespace, _, account = subject.removeprefix(SUBJECT_PREFIX).partition(":")
        if not subject.startswith(SUBJECT_PREFIX) or not namespace or not account:
            raise TokenError(f"the token's subject {subject!r} is not a service account")
        return namespace, account


def load_or_create(data_dir: Path) -> ServiceAccountTokens:
    path = data_dir / KEY_FILE
    try:
        key = bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        key = b""
    if len(key) < 32:
        key = secrets.token_bytes(32)
        write_private(path, key.hex() + "\n")
    os.chmod(path, 0o600)
    return ServiceAccountTokens(key)


def _sign(key: bytes, signing_input: str) -> str:
    return _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
