"""Who may get a certificate for which identity.

Two kinds of caller, told apart by the bearer token they send:

- a service account token (tokens.py) may get the one identity it is bound
  to: its namespace and service account, and nothing else;
- the control plane's admin token (the node agent's) may get the identity
  of a Workload in the store: a namespace where some Workload runs under
  that serviceAccountName ("default" when it names none). The admin can
  create Workloads, so this is no wall against the admin: it keeps a typo
  or a stray call from minting an identity nothing runs as.

Anything else is refused, with a message that names the identity asked for.
"""

from __future__ import annotations

from collections.abc import Callable

from pilotfish.ca.identity import SpiffeId
from pilotfish.ca.tokens import ServiceAccountTokens, TokenError
from pilotfish.controlplane.auth import bearer_token, has_token

AccountsIn = Callable[[str], set[str]]  # namespace -> service accounts its Workloads run as


class Unauthenticated(Exception):
    """No credential, or one that is not valid."""


class PermissionDenied(Exception):
    """A valid credential that does not allow this identity."""


class CsrAuthorizer:
    def __init__(
        self, admin_token: str, tokens: ServiceAccountTokens, accounts_in: AccountsIn
    ) -> None:
        self._admin_token = admin_token
        self._tokens = tokens
        self._accounts_in = accounts_in

    def __repr__(self) -> str:
        return "CsrAuthorizer()"

    def check(self, authorization: str | None, wanted: SpiffeId, now: float | None = None) -> str:
        """Who the caller is (for the log), if it may hold `wanted`; else raise."""
        presented = bearer_token(authorization)
        if not presented:
            raise Unauthenticated("the request carries no Authorization: Bearer token")
        if has_token(authorization, self._admin_token):
            if wanted.service_account not in self._accounts_in(wanted.namespace):
                raise PermissionDenied(
                    f"no Workload in namespace {wanted.namespace!r} runs as service account "
                    f"{wanted.service_account!r}, so the node agent may not hold {wanted}"
                )
            return "node agent"
        try:
            bound = self._tokens.verify(presented, now)
        except TokenError as e:
            raise Unauthenticated(f"the bearer token is not valid: {e}") from e
        if bound != wanted.account:
            raise PermissionDenied(
                f"the token of service account {bound[1]!r} in namespace {bound[0]!r} "
                f"may not hold {wanted}"
            )
        return f"service account {bound[0]}/{bound[1]}"
