"""The one error a route configuration can fail with."""

from __future__ import annotations


class RouteConfigError(ValueError):
    """A RouteConfiguration the proxy cannot honour exactly as Envoy would.

    The message starts with the field's path (`virtual_hosts[0].routes[2].match.safe_regex`)
    so that the NACK sent back to the control plane tells its operator where to look.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason
