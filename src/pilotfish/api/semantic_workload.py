"""Cross-field rules of pilotfish.dev Workload, which its schema cannot state:
mounts name declared volumes, probes name declared ports, percentages parse."""

from __future__ import annotations

import re
from typing import Any

from pilotfish.api.semantic import Errors, Rules
from pilotfish.objects import Obj

_PERCENT = re.compile(r"^(0|[1-9][0-9]*)%$")


def workload(obj: Obj, errors: Errors) -> None:
    spec = obj.get("spec") or {}
    volumes = {v["name"] for v in spec.get("volumes") or []}
    mount_paths: set[str] = set()
    for i, mount in enumerate(spec.get("volumeMounts") or []):
        path = f"spec.volumeMounts[{i}]"
        if mount["name"] not in volumes:
            errors.add(f"{path}.name", f'Not found: "{mount["name"]}"')
        if mount["mountPath"] in mount_paths:
            errors.invalid(f"{path}.mountPath", mount["mountPath"], "must be unique")
        mount_paths.add(mount["mountPath"])
    for i, volume in enumerate(spec.get("volumes") or []):
        items = (volume.get("configMap") or volume.get("secret") or {}).get("items") or []
        for j, item in enumerate(items):
            if ".." in item["path"].split("/") or item["path"].startswith("/"):
                errors.invalid(
                    f"spec.volumes[{i}].items[{j}].path",
                    item["path"],
                    "must be a relative path that does not contain '..'",
                )
    ports = {p["name"] for p in spec.get("ports") or []}
    for probe in ("readinessProbe", "livenessProbe"):
        _probe(f"spec.{probe}", spec.get(probe), ports, errors)
    _upstreams(spec.get("upstreams") or [], errors)
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    for field in ("maxSurge", "maxUnavailable"):
        _int_or_percent(f"spec.strategy.rollingUpdate.{field}", rolling.get(field), errors)


def _upstreams(upstreams: list[Obj], errors: Errors) -> None:
    """Two upstreams cannot listen on one address and port."""
    taken: set[tuple[str, int]] = set()
    for i, upstream in enumerate(upstreams):
        where = (upstream.get("localAddress") or "127.0.0.1", upstream["localPort"])
        if where in taken:
            errors.add(f"spec.upstreams[{i}].localPort", f"Duplicate value: {where[1]}")
        taken.add(where)


def _probe(path: str, probe: Any, ports: set[str], errors: Errors) -> None:
    if not isinstance(probe, dict):
        return
    for handler in ("httpGet", "tcpSocket"):
        port = (probe.get(handler) or {}).get("port")
        if isinstance(port, str) and port not in ports:
            errors.add(
                f"{path}.{handler}.port",
                f'Not found: "{port}": no port of spec.ports has that name',
            )
        if isinstance(port, int) and not 1 <= port <= 65535:
            errors.invalid(f"{path}.{handler}.port", port, "must be between 1 and 65535, inclusive")


def _int_or_percent(path: str, value: Any, errors: Errors) -> None:
    if isinstance(value, int) and value < 0:
        errors.invalid(path, value, "must be greater than or equal to 0")
    if isinstance(value, str) and not _PERCENT.match(value):
        errors.invalid(
            path,
            value,
            "a valid percent string must be a numeric string followed by an ending '%' "
            "(e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
        )
    elif isinstance(value, str) and int(value[:-1]) > 100:
        errors.invalid(path, value, "must not be greater than 100%")


RULES: dict[tuple[str, str], Rules] = {("pilotfish.dev", "Workload"): workload}
