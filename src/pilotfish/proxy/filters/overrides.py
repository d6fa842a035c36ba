"""Per-route filter configs (`typed_per_filter_config`), compiled once each.

The routing code merges the levels (route configuration, virtual host, route,
weighted cluster) by filter name, the most specific winning, and hands each
request the merged mapping of decoded protos. A filter whose name is in that
mapping uses the compiled form of that proto instead of its own config, as
Envoy's `resolveMostSpecificPerFilterConfig` does.

Compiled forms are kept by the identity of the proto, which the route table
holds for as long as it lives: one compile per config, not per request, and
state that belongs to a config (a rate limiter's bucket) is shared by every
request that config applies to — all the routes of a virtual host, for a
virtual host's config — and starts afresh when a new route table replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import Message

from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.per_filter import FilterConfigs

T = TypeVar("T")
M = TypeVar("M", bound=Message)

# Enough for every route of a large mesh; past it the oldest compiled configs
# go (a route table replaced many times over leaves its configs behind).
MAX_COMPILED = 4096


class RouteOverrides(Generic[T]):
    def __init__(self, name: str, base: T, compile: Callable[[Message, str], T]) -> None:
        self.name = name
        self.base = base
        self._compile = compile
        self._compiled: dict[int, tuple[Message, T]] = {}

    def __repr__(self) -> str:
        return f"<RouteOverrides {self.name} compiled={len(self._compiled)}>"

    def resolve(self, configs: FilterConfigs) -> T:
        msg = configs.get(self.name) if configs else None
        if msg is None:
            return self.base
        hit = self._compiled.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        return self._add(msg)

    def _add(self, msg: Message) -> T:
        compiled = self._compile(msg, f"typed_per_filter_config[{self.name!r}]")
        if len(self._compiled) >= MAX_COMPILED:
            del self._compiled[next(iter(self._compiled))]
        self._compiled[id(msg)] = (msg, compiled)
        return compiled


def expect(msg: Message, kind: type[M], path: str) -> M:
    """The per-route proto, if it has the type this filter takes."""
    if not isinstance(msg, kind):
        raise FilterConfigError(
            path, f"expected {kind.DESCRIPTOR.full_name}, got {msg.DESCRIPTOR.full_name}"
        )
    return msg


def only_disabled(kind: type[Message]) -> Callable[[Message, str], bool]:
    """The compile of a per-route config of which pilotfish honours only
    `disabled: true` (ext_authz's `ExtAuthzPerRoute`, jwt_authn's
    `PerRouteConfig`): True turns the filter off on that route; any other
    setting is refused, with its path, rather than stored and ignored."""

    def compile_disabled(msg: Message, path: str) -> bool:
        config = expect(msg, kind, path)
        bad = unsupported(config, frozenset({"disabled"}))
        if bad:
            raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
        if not getattr(config, "disabled", False):
            raise FilterConfigError(f"{path}.disabled", "value must equal true")
        return True

    return compile_disabled
