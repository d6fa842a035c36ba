"""Flagger's `prometheus` MetricTemplate provider (pkg/metrics/providers/
prometheus.go): an instant query, GET `<address>/api/v1/query`, whitespace in
the query collapsed, 5 s to answer; basic auth or a bearer token from the
provider's Secret; the provider's `headers` sent as they are."""

from __future__ import annotations

import base64
import json
import math
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pilotfish.client import RedirectHandler

TIMEOUT_S = 5.0
_SPACE = re.compile(r"\s+")
_NO_PROXY = urllib.request.ProxyHandler({})


class QueryError(Exception):
    """The query failed: Prometheus unreachable, an error answer, bad JSON."""


class NoValues(QueryError):
    """The query ran but gave no value (no samples, NaN): Flagger's
    ErrNoValuesFound, which it reports as "no values found"."""


@dataclass(frozen=True)
class Provider:
    """A MetricTemplate's spec.provider, its Secret's keys already looked up."""

    address: str
    credentials: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, list[str]] = field(default_factory=dict)
    insecure: bool = False

    def __repr__(self) -> str:  # never the credentials
        return f"Provider({self.address!r})"


def check_credentials(credentials: Mapping[str, str]) -> None:
    """A provider's Secret needs a `token`, or a `username` and a `password`."""
    if "token" in credentials:
        return
    for key in ("username", "password"):
        if key not in credentials:
            raise QueryError(f"the provider's Secret has no {key} (nor a token)")


def instant_query(provider: Provider, query: str) -> float:
    """The query's value now. NoValues when it has none, QueryError when it failed."""
    body = _get(provider, _query_url(provider.address, query))
    return value_of(body, provider.address)


Labels = dict[str, str]


def vector_query(provider: Provider, query: str) -> list[tuple[Labels, float]]:
    """Each sample of an instant vector: its labels and value (NaN left out);
    QueryError when the query failed or gave anything but a vector."""
    body = _get(provider, _query_url(provider.address, query))
    return [(labels, value) for at, labels, value in _series(body, "vector", provider.address)]


def range_query(
    provider: Provider, query: str, start: float, end: float, step: float
) -> list[tuple[float, Labels, float]]:
    """Each point of a range query (`/api/v1/query_range`): time, labels, value."""
    extra = {"start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    body = _get(provider, _query_url(provider.address, query, "query_range", extra))
    return _series(body, "matrix", provider.address)


def _series(body: Any, kind: str, address: str) -> list[tuple[float, Labels, float]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("resultType") != kind:
        raise QueryError(f"Prometheus at {address} did not answer a {kind}")
    found = []
    for sample in data.get("result") or []:
        if not isinstance(sample, dict):
            continue
        labels = {str(k): str(v) for k, v in (sample.get("metric") or {}).items()}
        points = sample.get("values") if kind == "matrix" else [sample.get("value")]
        for point in points if isinstance(points, list) else []:
            value = _number({"value": point}, address)
            if value is not None and not math.isnan(value):
                found.append((float(point[0]), labels, value))
    return found


def value_of(body: Any, address: str = "Prometheus") -> float:
    """Flagger's reading of an answer: every sample's value in turn, the
    last one kept (a single-sample query is the usual case); a range
    vector is an error; none, or NaN, is no value."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise QueryError(f"Prometheus at {address} answered without data")
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    value: float | None = None
    for sample in result if isinstance(result, list) else []:
        if isinstance(sample, dict) and sample.get("values") is not None:
            raise QueryError(f"the query returned multiple values (a range vector) at {address}")
        value = _number(sample, address) if isinstance(sample, dict) else value
    if value is None:
        raise NoValues(f"Prometheus at {address} returned no samples for the query")
    if math.isnan(value):
        raise NoValues(f"the query gave NaN at {address} (a division by zero: no traffic?)")
    return value


def _query_url(
    address: str, query: str, api: str = "query", extra: Mapping[str, str] | None = None
) -> str:
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise QueryError(f'the provider address "{address}" is not a valid URL')
    path = parts.path.rstrip("/") + "/api/v1/" + api
    encoded = urllib.parse.urlencode({"query": _SPACE.sub(" ", query), **(extra or {})})
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, encoded, ""))


def _get(provider: Provider, url: str) -> Any:
    request = urllib.request.Request(url, headers=_headers(provider))
    handlers: list[urllib.request.BaseHandler] = [_NO_PROXY, RedirectHandler()]
    if provider.insecure:
        handlers.append(urllib.request.HTTPSHandler(context=_unverified()))
    address = provider.address
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=TIMEOUT_S) as answer:
            text = answer.read()
    except urllib.error.HTTPError as e:
        raise QueryError(f"Prometheus at {address} answered {e.code}: {_error_of(e)}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise QueryError(f"Prometheus at {address} cannot be reached: {reason}") from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise QueryError(f"Prometheus at {address} did not answer JSON") from e


def _unverified() -> ssl.SSLContext:
    """insecureSkipVerify: TLS without checking the server's certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _headers(provider: Provider) -> dict[str, str]:
    headers = {name: ", ".join(values) for name, values in provider.headers.items()}
    credentials = provider.credentials
    if credentials.get("token"):
        headers["Authorization"] = "Bearer " + credentials["token"]
    elif credentials.get("username") and credentials.get("password"):
        pair = f"{credentials['username']}:{credentials['password']}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return headers


def _number(sample: dict[str, Any], address: str) -> float | None:
    pair = sample.get("value")
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        return None  # Flagger reads only string values, as Prometheus writes them
    try:
        return float(pair[1])
    except ValueError as e:
        raise QueryError(f'Prometheus at {address} answered "{pair[1]}", not a number') from e


def _error_of(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
        return str(body.get("error") or body)
    except (ValueError, OSError, AttributeError):
        return str(error.reason)
