"""Envoy-style bootstrap files: YAML or JSON parsed into
`envoy.config.bootstrap.v3.Bootstrap`, with every field the proxy does not
honour rejected at start, by path."""

from __future__ import annotations

import json
import os
import re

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from pilotfish.proxy import xds_types
from pilotfish.proxy.proto_fields import unsupported

# Listener and cluster contents are checked by their own compilers, which the
# same resources arriving over xDS go through.
SUPPORTED = frozenset(
    {
        "node",
        "static_resources.listeners",
        "static_resources.clusters",
        "dynamic_resources.ads_config.api_type",
        "dynamic_resources.ads_config.transport_api_version",
        "dynamic_resources.ads_config.grpc_services.envoy_grpc.cluster_name",
        "dynamic_resources.ads_config.grpc_services.initial_metadata.key",
        "dynamic_resources.ads_config.grpc_services.initial_metadata.value",
        "dynamic_resources.ads_config.set_node_on_first_message_only",
        "dynamic_resources.lds_config.ads",
        "dynamic_resources.lds_config.resource_api_version",
        "dynamic_resources.cds_config.ads",
        "dynamic_resources.cds_config.resource_api_version",
        "admin.address.socket_address.address",
        "admin.address.socket_address.port_value",
    }
)


class BootstrapError(Exception):
    """The bootstrap cannot be used; the message names the file and the field."""


def load_bootstrap(path: str | os.PathLike[str]) -> Bootstrap:
    try:
        with open(path, encoding="utf-8") as file:
            data = _json_or_yaml(file.read())
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, or not YAML
        raise BootstrapError(f"{path}: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise BootstrapError(f"{path}: a bootstrap is a YAML or JSON object")
    return parse_bootstrap(data, str(path))


def _json_or_yaml(text: str) -> object:
    """A JSON object is read as JSON (YAML's reading of it is the same), so a
    sidecar whose bootstrap is JSON, as the node agent writes it, never loads
    PyYAML (0.8 MiB of idle memory); anything else is YAML."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # YAML's flow mapping, or an error YAML words better
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # load_bootstrap's one error type for a bad text
        raise ValueError(str(e)) from e


def parse_bootstrap(data: dict[str, object], source: str = "bootstrap") -> Bootstrap:
    bootstrap = Bootstrap()
    xds_types.register_named(data)
    try:
        json_format.ParseDict(data, bootstrap)
    except json_format.ParseError as e:
        raise BootstrapError(f"{source}: {innermost(e)}") from e
    bad = unsupported(bootstrap, SUPPORTED)
    if bad:
        raise BootstrapError(f"{source}: field not supported by pilotfish: {', '.join(bad)}")
    _check_initial_metadata(bootstrap, source)
    return bootstrap


_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _check_initial_metadata(bootstrap: Bootstrap, source: str) -> None:
    """What Envoy refuses in gRPC initial metadata, refused at start: keys of
    other characters than gRPC's (they are sent lowercased, as Envoy does), and
    values that are not printable ASCII; either would fail every stream."""
    for i, service in enumerate(bootstrap.dynamic_resources.ads_config.grpc_services):
        for j, header in enumerate(service.initial_metadata):
            where = (
                f"{source}: dynamic_resources.ads_config.grpc_services[{i}].initial_metadata[{j}]"
            )
            if not _METADATA_KEY.fullmatch(header.key) or header.key.endswith("-bin"):
                raise BootstrapError(
                    f"{where}.key: illegal characters in gRPC initial metadata key "
                    f"{header.key!r} (letters, digits, '-', '_' and '.'; no '-bin' suffix)"
                )
            if not header.value.isprintable() or not header.value.isascii():
                raise BootstrapError(f"{where}.value: must be printable ASCII")


def innermost(error: json_format.ParseError) -> str:
    """protobuf nests one "Failed to parse X field:" per level; the fields make
    the path, and the last clause is the reason."""
    text, path = str(error), []
    while text.startswith("Failed to parse ") and " field: " in text:
        head, text = text.split(" field: ", 1)
        path.append(head.removeprefix("Failed to parse "))
    reason = text.split("\n")[0].rstrip(".")
    return f"{'.'.join(path)}: {reason}" if path else reason
