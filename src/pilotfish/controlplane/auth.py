"""Who may call the API: a bearer token for writes, and for reads from other hosts.

One token, generated on first start and kept in the data directory (mode
0600), so a restart keeps every client's config valid. Reads are open to
loopback peers only, as the issue allows: someone on this host can already
read the store file, but a remote peer must prove it holds the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from pilotfish.api.errors import Unauthorized
from pilotfish.config import write_private

TOKEN_FILE = "token"
_BEARER = "bearer "


def load_or_create_token(data_dir: Path) -> str:
    """The token in DATA_DIR/token, written there first if there is none."""
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_private(path, token + "\n")
    os.chmod(path, 0o600)  # a copy made by hand with a looser mode is tightened
    return token


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def has_token(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token`, compared in constant time."""
    if not authorization or not authorization.lower().startswith(_BEARER):
        return False
    given = authorization[len(_BEARER) :].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def authorize(*, write: bool, peer: str, authorization: str | None, token: str) -> None:
    """Raise Unauthorized unless the caller may do this."""
    if has_token(authorization, token):
        return
    if not write and is_loopback(peer):
        return
    if authorization:
        raise Unauthorized("Unauthorized: the bearer token is not valid")
    why = "writes" if write else "reads from a non-loopback address"
    raise Unauthorized(f"Unauthorized: {why} need an Authorization: Bearer token")
