"""Addresses as the API and its callers judge them: shared by the client
library, the control plane's API and its xDS server."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4-mapped loopback; a zone (`%eth0`) is ignored,
    a name is not an address (False)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
