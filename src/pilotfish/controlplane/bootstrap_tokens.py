"""Bootstrap tokens, as kubeadm's: `ID.SECRET` (`[a-z0-9]{6}.[a-z0-9]{16}`),
for a node agent's first contact. Kept in DATA_DIR/bootstrap-tokens (0600),
the secret hashed, with the expiry and description; re-read when the file
changes, so `pilotfish token create --bootstrap` and `token delete` act on
a running control plane at once.

A valid token authenticates as "system:bootstrap:ID" in the group
"system:bootstrappers", as Kubernetes' bootstrap token authenticator names
it; what that caller may do (ask for a node certificate, nothing else) is
auth.py's. An expired or unknown token authenticates as nobody (401).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilotfish.api.errors import BadRequest, NotFound
from pilotfish.api.gotypes import parse_rfc3339, rfc3339
from pilotfish.config import write_private
from pilotfish.controlplane.watched_file import WatchedFile, read_json_object

BOOTSTRAP_TOKENS_FILE = "bootstrap-tokens"
DEFAULT_TTL_S = 24 * 3600  # kubeadm's --ttl default
USER_PREFIX = "system:bootstrap:"
GROUP = "system:bootstrappers"
# kubeadm adds its tokens to "system:bootstrappers:kubeadm:default-node-token".
EXTRA_GROUP = "system:bootstrappers:pilotfish:default-node-token"
USAGES = ("authentication",)
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class BootstrapToken:
    token_id: str
    secret_hash: str  # sha256 of the secret, hex
    expires: float | None  # seconds since the epoch; None: never
    description: str = ""

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def to_json(self) -> dict[str, Any]:
        return {
            "secretHash": self.secret_hash,
            "expiration": rfc3339(self.expires) if self.expires is not None else None,
            "description": self.description,
        }

    @classmethod
    def of(cls, token_id: str, data: Any) -> BootstrapToken:
        if not isinstance(data, dict) or not isinstance(data.get("secretHash"), str):
            raise BadRequest(f'bootstrap token "{token_id}": expected an object with secretHash')
        expiration = data.get("expiration")
        expires = parse_rfc3339(expiration).timestamp() if expiration else None
        return cls(token_id, data["secretHash"], expires, str(data.get("description") or ""))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def read_bootstrap_tokens(data_dir: Path) -> dict[str, BootstrapToken]:
    loaded = read_json_object(data_dir / BOOTSTRAP_TOKENS_FILE, "token IDs to tokens")
    return {str(k): BootstrapToken.of(str(k), v) for k, v in loaded.items()}


def _write(data_dir: Path, found: dict[str, BootstrapToken]) -> None:
    text = json.dumps({k: t.to_json() for k, t in sorted(found.items())}, indent=2)
    write_private(data_dir / BOOTSTRAP_TOKENS_FILE, text + "\n")


def create_bootstrap_token(
    data_dir: Path, ttl_s: float = DEFAULT_TTL_S, description: str = "", now: float | None = None
) -> str:
    """A new `ID.SECRET`; only the secret's hash is kept, so this is the one
    time it is seen. `ttl_s` 0: it never expires (kubeadm's --ttl 0)."""
    if ttl_s < 0:
        raise BadRequest(f"--ttl must not be negative, got {ttl_s:g}s")
    found = read_bootstrap_tokens(data_dir)
    token_id = _random(6)
    while token_id in found:
        token_id = _random(6)
    secret = _random(16)
    now = time.time() if now is None else now
    expires = now + ttl_s if ttl_s else None
    found[token_id] = BootstrapToken(token_id, _hash(secret), expires, description)
    _write(data_dir, found)
    return f"{token_id}.{secret}"


def delete_bootstrap_token(data_dir: Path, token: str) -> str:
    """Revoke by ID, or by the whole token as kubeadm accepts either; the ID."""
    match = TOKEN.match(token)
    token_id = match.group(1) if match else token
    found = read_bootstrap_tokens(data_dir)
    if found.pop(token_id, None) is None:
        raise NotFound(f'bootstrap token "{token_id}" not found')
    _write(data_dir, found)
    return token_id


class BootstrapTokens:
    """Checks presented tokens against DATA_DIR/bootstrap-tokens, re-read
    when the file changes (each write is a new file)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._file: WatchedFile[dict[str, BootstrapToken]] = WatchedFile(
            data_dir / BOOTSTRAP_TOKENS_FILE, lambda: read_bootstrap_tokens(data_dir), {}
        )

    def __repr__(self) -> str:
        return f"BootstrapTokens({str(self.data_dir)!r})"

    def user(self, presented: str, now: float | None = None) -> str | None:
        """ "system:bootstrap:ID" for a valid, unexpired token; None otherwise."""
        match = TOKEN.match(presented)
        if match is None:
            return None
        token_id, secret = match.groups()
        found = self._file.current().get(token_id)
        if found is None:
            return None
        if not hmac.compare_digest(_hash(secret).encode(), found.secret_hash.encode()):
            return None
        if found.expired(time.time() if now is None else now):
            return None
        return USER_PREFIX + token_id


def ttl_text(token: BootstrapToken, now: float) -> str:
    """kubeadm's TTL column: `23h`, `59m`, `<forever>`, `<invalid>` once expired."""
    if token.expires is None:
        return "<forever>"
    left = token.expires - now
    if left <= 0:
        return "<invalid>"
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= seconds:
            return f"{int(left // seconds)}{unit}"
    return f"{int(left)}s"


def token_rows(data_dir: Path, now: float | None = None) -> list[list[str]]:
    """`pilotfish token list`'s bootstrap rows, kubeadm's columns."""
    now = time.time() if now is None else now
    rows = []
    for token in sorted(read_bootstrap_tokens(data_dir).values(), key=lambda t: t.token_id):
        expires = rfc3339(token.expires) if token.expires is not None else "<never>"
        rows.append(
            [
                f"{token.token_id}.<secret>",
                ttl_text(token, now),
                expires,
                ",".join(USAGES),
                token.description or "<none>",
                EXTRA_GROUP,
            ]
        )
    return rows
