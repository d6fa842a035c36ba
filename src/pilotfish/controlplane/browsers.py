"""What a web page in the user's browser must not do with the API.

Anonymous requests are served to loopback peers (reads, and the load
tester's paths that Flagger's webhooks call without a token). A browser on
the same host is such a peer: any page it shows can POST to
http://127.0.0.1:15080/loadtester/gate/open (a cross-origin POST with a text
body needs no CORS preflight) and approve a canary's promotion, or start
load tests; and a page whose own host name resolves to 127.0.0.1 (DNS
rebinding) can read the answers too. Browsers say where a request comes
from (`Origin`, `Sec-Fetch-Site`) and which host they think they talk to
(`Host`); webhooks, the CLI and curl do not send the first two, and name the
server by its address. So an anonymous request is refused when a browser
says it is cross-site, or when its Host is a name other than localhost.
A request with the token is never refused here: a page cannot have it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from pilotfish.api.errors import Unauthorized

_LOCAL_NAMES = ("localhost",)


def refuse_cross_site(headers: Mapping[str, str]) -> None:
    """Raise Unauthorized for an anonymous request a web page could have made
    (`headers` with names in lower case)."""
    site = headers.get("sec-fetch-site", "")
    origin = headers.get("origin")
    host = headers.get("host")
    if site in ("cross-site", "same-site") or (
        origin is not None and not _same_origin(origin, host)
    ):
        raise Unauthorized(
            "Unauthorized: requests from a web page need an Authorization: Bearer token"
        )
    if host is not None and not _local_host(host):
        raise Unauthorized(
            f'Unauthorized: requests to "{host}" need an Authorization: Bearer token '
            "(without one, name the server by its address or as localhost)"
        )


def _same_origin(origin: str, host: str | None) -> bool:
    parts = urlsplit(origin)
    return host is not None and parts.scheme == "http" and parts.netloc == host


def _local_host(host: str) -> bool:
    """An IP address or localhost, with or without a port: no name a page's
    owner could point at this host."""
    name = urlsplit(f"//{host}").hostname or ""
    if name in _LOCAL_NAMES:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
