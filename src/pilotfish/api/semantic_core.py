"""Rules of Kubernetes' own validation for the core kinds that a schema cannot
state: unique Service ports, base64 data, keys of ConfigMaps and Secrets."""

from __future__ import annotations

import base64
import binascii
import re

from pilotfish.api.semantic import Errors, Rules
from pilotfish.objects import Obj

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CONFIG_KEY_REASON = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
    "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
    "'[-._a-zA-Z0-9]+')"
)


def service(obj: Obj, errors: Errors) -> None:
    ports = (obj.get("spec") or {}).get("ports") or []
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    for i, port in enumerate(ports):
        path, name = f"spec.ports[{i}]", port.get("name", "")
        if len(ports) > 1 and not name:
            errors.add(f"{path}.name", "Required value")
        if name and name in names:
            errors.add(f"{path}.name", f'Duplicate value: "{name}"')
        names.add(name)
        key = (int(port["port"]), str(port.get("protocol", "TCP")))
        if key in numbers:
            errors.add(path, f'Duplicate value: {{"port":{key[0]},"protocol":"{key[1]}"}}')
        numbers.add(key)
        target = port.get("targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            errors.invalid(f"{path}.targetPort", target, "must be between 1 and 65535, inclusive")


def config_map(obj: Obj, errors: Errors) -> None:
    data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
    _keys("data", data, errors)
    _keys("binaryData", binary, errors)
    for key in set(data) & set(binary):
        errors.invalid(f"binaryData[{key}]", key, "duplicate of key present in data")


def secret(obj: Obj, errors: Errors) -> None:
    data = obj.get("data") or {}
    _keys("data", data, errors)
    _keys("stringData", obj.get("stringData") or {}, errors)
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            errors.invalid(f"data[{key}]", "<secret contents redacted>", "must be base64-encoded")


def _keys(path: str, values: Obj, errors: Errors) -> None:
    for key in values:
        if len(key) > 253 or not _CONFIG_KEY.match(key):
            errors.invalid(f"{path}[{key}]", key, _CONFIG_KEY_REASON)


RULES: dict[tuple[str, str], Rules] = {
    ("", "Service"): service,
    ("", "ConfigMap"): config_map,
    ("", "Secret"): secret,
}
