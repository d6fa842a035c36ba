"""A Workload and the ConfigMaps/Secrets it references, resolved into what
one instance runs: argv, env, files. Pure functions, so the rules ($(VAR)
expansion, optional references, the content hash) are tested without
processes.

The template hash (api/workloads.py) covers the spec and the data of every
referenced ConfigMap or Secret, as Wave and Reloader do: a change to either
means new instances, rolled forward by plan.py.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pilotfish.api.workloads import ConfigData
from pilotfish.objects import Obj

_VAR = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class SpecError(ValueError):
    """The Workload cannot be run as written (a missing required reference);
    the message names the field, and shows as the instance's last error."""


@dataclass(frozen=True)
class Resolved:
    argv: list[str]
    env: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) rule: a defined name expands, an undefined one
    stays as written, `$$` is a literal `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(one, text)


def resolve(spec: Obj, base_env: Mapping[str, str], configs: ConfigData) -> Resolved:
    """argv, env and files of one instance; `base_env` is what the agent
    provides (PORT, HTTP_PROXY, ...), which the spec's env may use."""
    env = dict(base_env)
    for source in spec.get("envFrom") or []:
        env.update(_env_from(source, configs))
    for var in spec.get("env") or []:
        value = _env_value(var, env, configs)
        if value is not None:
            env[var["name"]] = value
    argv = [expand(a, env) for a in [*spec["command"], *(spec.get("args") or [])]]
    return Resolved(argv, env, _files(spec, configs))


def _env_from(source: Obj, configs: ConfigData) -> dict[str, str]:
    kind, ref = (
        ("ConfigMap", source["configMapRef"])
        if "configMapRef" in source
        else ("Secret", source["secretRef"])
    )
    data = _lookup(configs, kind, ref["name"], bool(ref.get("optional")), "envFrom")
    prefix = source.get("prefix", "")
    return {prefix + k: _text(kind, v) for k, v in (data or {}).items()}


def _env_value(var: Obj, env: Mapping[str, str], configs: ConfigData) -> str | None:
    if "valueFrom" not in var:
        return expand(var.get("value", ""), env)
    source = var["valueFrom"]
    kind, ref = (
        ("ConfigMap", source["configMapKeyRef"])
        if "configMapKeyRef" in source
        else ("Secret", source["secretKeyRef"])
    )
    where = f"env {var['name']}"
    data = _lookup(configs, kind, ref["name"], bool(ref.get("optional")), where)
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise SpecError(f'{where}: key "{ref["key"]}" not found in {kind} "{ref["name"]}"')
    return _text(kind, data[ref["key"]])


def _files(spec: Obj, configs: ConfigData) -> dict[str, bytes]:
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    files: dict[str, bytes] = {}
    for mount in spec.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        kind, source = (
            ("ConfigMap", volume["configMap"])
            if "configMap" in volume
            else ("Secret", volume["secret"])
        )
        name = source.get("name") or source.get("secretName") or ""
        where = f"volume {volume['name']}"
        data = _lookup(configs, kind, name, bool(source.get("optional")), where) or {}
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] in data:
                path = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
                files[path] = _bytes(kind, data[item["key"]])
    return files


def _lookup(
    configs: ConfigData, kind: str, name: str, optional: bool, where: str
) -> Mapping[str, str] | None:
    data = configs.get((kind, name))
    if data is None and not optional:
        raise SpecError(f'{where}: {kind} "{name}" not found')
    return data


def _bytes(kind: str, value: str) -> bytes:
    return base64.b64decode(value) if kind == "Secret" else value.encode()


def _text(kind: str, value: str) -> str:
    return _bytes(kind, value).decode("utf-8", "replace")


def config_data(objects: list[Obj]) -> dict[tuple[str, str], dict[str, str]]:
    """ConfigMap and Secret objects of one namespace as ConfigData; a
    Secret's stringData is folded in as Kubernetes does on write."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for obj in objects:
        data = dict(obj.get("data") or {})
        for key, value in (obj.get("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        out[(obj["kind"], obj["metadata"]["name"])] = {k: str(v) for k, v in data.items()}
    return out
