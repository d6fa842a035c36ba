"""Flagger's `prometheus` MetricTemplate provider: an instant query against
a Prometheus server's HTTP API; the first sample's value is the metric's."""

from __future__ import annotations

import base64
import json
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_S = 5.0
_NO_PROXY = urllib.request.ProxyHandler({})


class QueryError(Exception):
    """Why a query gave no value, in one sentence."""


def instant_query(
    address: str,
    query: str,
    *,
    credentials: dict[str, str] | None = None,
    insecure: bool = False,
) -> float:
    """The query's value now; QueryError when it has none or failed."""
    url = address.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    request = urllib.request.Request(url, headers=_auth_headers(credentials or {}))
    handlers: list[Any] = [_NO_PROXY]
    if insecure:
        handlers.append(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=TIMEOUT_S) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as e:
        raise QueryError(f"Prometheus at {address} answered {e.code}: {_error_of(e)}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise QueryError(f"Prometheus at {address} cannot be reached: {reason}") from e
    except ValueError as e:
        raise QueryError(f"Prometheus at {address} did not answer JSON") from e
    return _value(body)


def _value(body: Any) -> float:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise QueryError("Prometheus answered without data")
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        raise QueryError("no values found")
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise QueryError("Prometheus answered a value that is not a number") from e
    if math.isnan(value) or math.isinf(value):
        raise QueryError("no values found (the query gave NaN)")
    return value


def _auth_headers(credentials: dict[str, str]) -> dict[str, str]:
    if credentials.get("username") and credentials.get("password"):
        pair = f"{credentials['username']}:{credentials['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if credentials.get("token"):
        return {"Authorization": "Bearer " + credentials["token"]}
    return {}


def _error_of(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
        return str(body.get("error") or body)
    except (ValueError, OSError, AttributeError):
        return str(error.reason)
