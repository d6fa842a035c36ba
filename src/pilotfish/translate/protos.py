"""Small builders shared by the translators: durations, percentages, string
matchers, ADS config sources. The protobuf boundary: Istio's YAML values in,
Envoy messages out."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.objects import Obj

NS_PER_S = 1_000_000_000


def duration(text: str | int | float) -> duration_pb2.Duration:
    """An Istio duration (`7s`, `100ms`, `1h`) or a number of seconds."""
    out = duration_pb2.Duration()
    ns = parse_duration_ns(text) if isinstance(text, str) else int(text * NS_PER_S)
    out.seconds, out.nanos = divmod(ns, NS_PER_S)
    return out


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def percent_to_fraction(value: float) -> percent_pb2.FractionalPercent:
    """Istio's Percent (0-100, fractional) as Envoy's parts per million."""
    return percent_pb2.FractionalPercent(
        numerator=int(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def integer_percent(value: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=value, denominator=percent_pb2.FractionalPercent.HUNDRED
    )


def string_matcher(match: Obj) -> string_pb2.StringMatcher | None:
    """Istio's StringMatch (exact, prefix, regex) as Envoy's StringMatcher."""
    if "exact" in match:
        return string_pb2.StringMatcher(exact=str(match["exact"]))
    if "prefix" in match:
        return string_pb2.StringMatcher(prefix=str(match["prefix"]))
    if "regex" in match:
        return string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=str(match["regex"]))
        )
    return None


def is_present_match(match: Obj | None) -> bool:
    """An empty StringMatch, or the regex `*` Istio reads as "present"."""
    return not match or string_matcher(match) is None or match.get("regex") == "*"


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )
