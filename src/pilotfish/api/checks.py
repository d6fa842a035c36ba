"""Small checks Istio's webhook applies in many places: hosts, ports, durations,
regexes, labels. Each returns the reasons a value is wrong ([] when it is
right), in Istio's words, so the kind-specific rules stay short."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

import re2

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.api.names import label_value_errors, qualified_name_errors

_NS_PER_MS = 1_000_000
# Istio's DNS labels allow upper case (pkg/config/labels).
_ISTIO_LABEL = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_WILDCARD_LABEL = re.compile(r"^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$")
_PORT_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_a-zA-Z0-9]*[a-zA-Z0-9])?$")
REGEX_MAX_LENGTH = 1024
PROTOCOLS = frozenset(
    {
        "HTTP",
        "HTTPS",
        "HTTP2",
        "HTTP_PROXY",
        "GRPC",
        "GRPC-WEB",
        "TCP",
        "TLS",
        "MONGO",
        "REDIS",
        "MYSQL",
        "UDP",
    }
)


def is_istio_label(value: str) -> bool:
    return len(value) <= 63 and bool(_ISTIO_LABEL.match(value))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def ip_or_cidr(value: str) -> list[str]:
    if value.count("/") == 1:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return [f"{value} is not a valid CIDR block"]
        return []
    return [] if is_ip(value) else [f"{value} is not a valid IP"]


def port(number: int) -> list[str]:
    return [] if 1 <= number <= 65535 else [f"port number {number} must be in the range 1..65535"]


def port_name(name: str) -> list[str]:
    if len(name) > 63 or not _PORT_NAME.match(name):
        return [f"invalid port name: {name}"]
    return []


def protocol(name: str) -> list[str]:
    if name.upper() in PROTOCOLS:
        return []
    return [f'unrecognized protocol "{name}"']


def _dns_preconditions(domain: str) -> list[str]:
    if len(domain) > 255:
        return [f'domain name "{domain}" too long (max 255)']
    if not domain:
        return ["empty domain name not allowed"]
    return []


def dns1123_labels(domain: str) -> list[str]:
    parts = domain.split(".")
    if parts[-1].isdigit():
        return [
            f'domain name "{domain}" invalid (top level domain "{parts[-1]}" cannot be all-numeric)'
        ]
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return []  # a trailing dot names a fully-qualified name
        if not is_istio_label(label):
            return [f'domain name "{domain}" invalid (label "{label}" invalid)']
    return []


def fqdn(domain: str) -> list[str]:
    return _dns_preconditions(domain) or dns1123_labels(domain)


def wildcard_domain(domain: str) -> list[str]:
    """A host with an optional wildcard in its first label only: `*.example.com`."""
    problems = _dns_preconditions(domain)
    if problems:
        return problems
    first, dot, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.match(first):
        return [f'domain name "{domain}" invalid (label "{first}" invalid)']
    return dns1123_labels(rest) if dot else []


def host_matches(a: str, b: str) -> bool:
    """Whether either host covers the other (Istio's host.Name.Matches both ways)."""
    return _covers(a, b) or _covers(b, a)


def _covers(pattern: str, host: str) -> bool:
    if pattern == host or pattern == "*":
        return True
    return pattern.startswith("*") and host.endswith(pattern[1:])


def duration(text: str) -> list[str]:
    """Istio's ValidateDuration: at least 1ms, at most millisecond precision."""
    try:
        ns = parse_duration_ns(text)
    except ValueError as exc:
        return [str(exc)]
    if ns < _NS_PER_MS:
        return ["duration must be greater than 1ms"]
    if ns % _NS_PER_MS:
        return ["only durations to ms precision are supported"]
    return []


@functools.cache
def regex(pattern: str) -> tuple[str, ...]:
    """RE2 syntax, as Envoy compiles it: no lookaround, no backreferences."""
    if len(pattern) > REGEX_MAX_LENGTH:
        return (f"regex is too large, max length allowed is {REGEX_MAX_LENGTH}",)
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return (
            f"{detail}; Istio uses RE2 style regex-based match "
            "(https://github.com/google/re2/wiki/Syntax)",
        )
    return ()


def selector_labels(labels: dict[str, Any]) -> list[str]:
    """Istio's labels.Instance.Validate: Kubernetes label keys and values."""
    errors: list[str] = []
    for key, value in labels.items():
        if qualified_name_errors(key):
            errors.append(f'invalid tag key: "{key}"')
        if label_value_errors(str(value)):
            errors.append(f'invalid tag value: "{value}"')
    return errors


def percent(value: float) -> list[str]:
    if value < 0 or value > 100:
        return [f"percentage {value:g} is not in range 0..100"]
    return []


_HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")
_HEADER_VALUE = re.compile("^[^\x00-\x08\x0a-\x1f\x7f]*$")
_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
_JWT_CLAIM = "@request.auth.claims"
_CLAIM_PATH = re.compile(r"^(\.[^.\[\]]+)+$|^(\[[^\[\]]+\])+$")


def header_name(name: str) -> list[str]:
    if not name:
        return ["header name cannot be empty"]
    if not _HEADER_NAME.match(name):
        return [f"header name {name} is not a valid header name"]
    return []


def header_name_or_jwt_claim(name: str) -> list[str]:
    """A header to match on: a header name, a pseudo-header, or a JWT claim
    (`@request.auth.claims.key` or `@request.auth.claims[a][b]`)."""
    if name.lower().startswith(_JWT_CLAIM.lower()) and _CLAIM_PATH.match(name[len(_JWT_CLAIM) :]):
        return []
    if name in _PSEUDO_HEADERS:
        return []
    return header_name(name)


def request_header_write(name: str) -> list[str]:
    """A request header to set or add: the authority (Host) may be rewritten."""
    if not name:
        return ["header name cannot be empty"]
    if name.startswith(":") and name.lower() != ":authority":
        return [f'invalid header "{name}": header cannot have ":" prefix']
    return []


def header_operation_name(name: str) -> list[str]:
    """A request header to remove, or a response header to write."""
    if not name:
        return ["header name cannot be empty"]
    if name.lower() == "host":
        return [f'invalid header "{name}": cannot set Host header']
    if name.startswith(":"):
        return [f'invalid header "{name}": header cannot have ":" prefix']
    return []


def header_value(value: str) -> list[str]:
    if not _HEADER_VALUE.match(value):
        return [f"header value configuration {value} is invalid"]
    return []
