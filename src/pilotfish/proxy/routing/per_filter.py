"""typed_per_filter_config: decoded once, merged most-specific-wins by filter name.

Filters read their per-route config from `Route.filter_configs` (the fault
filter: `FAULT` -> `HTTPFault`). Config-level entries are overridden by the
virtual host's, those by the route's, and those by a weighted cluster's, as
Envoy's `mostSpecificPerFilterConfig` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from pilotfish.proxy import xds_types
from pilotfish.proxy.routing.errors import RouteConfigError

FAULT = "envoy.filters.http.fault"
FilterConfigs = Mapping[str, Message]
EMPTY: FilterConfigs = MappingProxyType({})

# Filters whose config has exactly one right type; others take any registered type.
_EXPECTED = {FAULT: fault_pb2.HTTPFault.DESCRIPTOR.full_name}
_FILTER_CONFIG = route_components_pb2.FilterConfig.DESCRIPTOR.full_name


def decode_filter_configs(configs: Mapping[str, AnyProto], path: str) -> dict[str, Message]:
    prefix = f"{path}.typed_per_filter_config" if path else "typed_per_filter_config"
    return {
        name: _decode(name, any_msg, f"{prefix}[{name!r}]") for name, any_msg in configs.items()
    }


def merge_filter_configs(*levels: Mapping[str, Message]) -> FilterConfigs:
    """Least specific first."""
    merged: dict[str, Message] = {}
    for level in levels:
        merged.update(level)
    return MappingProxyType(merged) if merged else EMPTY


def _decode(name: str, any_msg: AnyProto, path: str) -> Message:
    msg = _unpack(any_msg, path)
    if msg.DESCRIPTOR.full_name == _FILTER_CONFIG:
        assert isinstance(msg, route_components_pb2.FilterConfig)
        if msg.disabled:
            raise RouteConfigError(
                f"{path}.disabled", "disabling a filter per route is not supported"
            )
        msg = _unpack(msg.config, f"{path}.config")
    expected = _EXPECTED.get(name)
    if expected is not None and msg.DESCRIPTOR.full_name != expected:
        raise RouteConfigError(path, f"expected {expected}, got {msg.DESCRIPTOR.full_name}")
    return msg


def _unpack(any_msg: AnyProto, path: str) -> Message:
    type_name = any_msg.type_url.rpartition("/")[2]
    xds_types.register(type_name)
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        raise RouteConfigError(path, f"unknown config type {type_name!r}") from None
    msg: Message = message_factory.GetMessageClass(descriptor)()
    if not any_msg.Unpack(msg):
        raise RouteConfigError(path, f"cannot decode {type_name}")
    return msg
