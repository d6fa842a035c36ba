"""The service account token each instance's sidecar shows the CA, as the
kubelet projects one into a pod for istio-agent: minted by the control plane
(TokenRequest) for the Workload's namespace and serviceAccountName, written
0600 into the instance's directory (`istio-token`, Istio's file name), and
replaced once 80% of its life has passed (the kubelet's rule), so the
sidecar always finds a valid one when it renews its certificate. The
agent's own admin token never reaches the sidecar."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pilotfish.api.errors import ApiError
from pilotfish.config import write_private
from pilotfish.objects import Obj

TOKEN_FILE = "istio-token"
TTL_S = 3600
REFRESH_AT = 0.8  # of the token's life, as the kubelet refreshes projected tokens
RETRY_S = 5.0


class TokenClient(Protocol):
    def create_token(
        self, namespace: str, service_account: str, expiration_seconds: int
    ) -> Obj: ...


@dataclass
class ProjectedToken:
    path: Path
    namespace: str
    service_account: str
    refresh_at: float = 0.0  # time.monotonic(); 0: not written by this agent yet

    def refresh(self, client: TokenClient, now: float | None = None) -> str:
        """Write a new token when due; an error message when the control plane
        refused or was unreachable (the next call tries again)."""
        now = time.monotonic() if now is None else now
        if now < self.refresh_at:
            return ""
        try:
            answer = client.create_token(self.namespace, self.service_account, TTL_S)
        except ApiError as e:
            self.refresh_at = now + RETRY_S
            return f"service account token: {e.message}"
        status = answer.get("status")
        token = status.get("token") if isinstance(status, dict) else None
        if not isinstance(token, str) or not token:
            self.refresh_at = now + RETRY_S
            return "service account token: the control plane's answer has no status.token"
        write_private(self.path, token + "\n")
        self.refresh_at = now + TTL_S * REFRESH_AT
        return ""
