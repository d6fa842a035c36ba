"""The sidecar's HTTP filters (RBAC, ext_authz, fault, CORS, local rate limit) as decisions the
shell applies: `compile_http_filters` builds the chain from an
HttpConnectionManager's http_filters; see `base` for how a request goes through."""

from pilotfish.proxy.filters.base import (
    PROCEED,
    Check,
    CheckResult,
    Connection,
    Delay,
    Exchange,
    LocalReply,
    Proceed,
    Step,
)
from pilotfish.proxy.filters.chain import FilterChain, HttpFilter, compile_http_filters
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.fault import FaultDecision, FaultPolicy, compile_fault
from pilotfish.proxy.filters.percent import Percent

__all__ = [
    "PROCEED",
    "Check",
    "CheckResult",
    "Connection",
    "Delay",
    "Exchange",
    "FaultDecision",
    "FaultPolicy",
    "FilterChain",
    "FilterConfigError",
    "HttpFilter",
    "LocalReply",
    "Percent",
    "Proceed",
    "Step",
    "compile_fault",
    "compile_http_filters",
]
