"""The one error an HTTP filter configuration can fail with."""

from __future__ import annotations


class FilterConfigError(ValueError):
    """An HTTP filter (or its per-route config) pilotfish cannot honour as Envoy would.

    The message starts with the field's path (`http_filters[1].typed_config.abort.http_status`)
    so the NACK sent to the control plane says where to look.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason
