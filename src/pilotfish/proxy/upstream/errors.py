"""The one error a cluster or load assignment can fail to compile with."""

from __future__ import annotations


class ClusterConfigError(ValueError):
    """A Cluster or ClusterLoadAssignment the proxy cannot honour as Envoy would.

    The message names the resource and the field's path
    (`cluster reviews: outlier_detection.monitors: field not supported by pilotfish`)
    so that the NACK tells the control plane's operator where to look.
    """

    def __init__(self, resource: str, path: str, reason: str) -> None:
        where = f"{resource}: {path}" if path else resource
        super().__init__(f"{where}: {reason}")
        self.resource = resource
        self.path = path
        self.reason = reason
