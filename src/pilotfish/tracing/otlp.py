"""OTLP/HTTP trace export requests decoded into Jaeger-shaped spans (pure).

A request body is an ExportTraceServiceRequest, as protobuf
(`application/x-protobuf`) or as OTLP's JSON mapping (`application/json`:
ids in hex, enums as numbers, unknown fields ignored), optionally gzipped
(`Content-Encoding: gzip`). Decoding is all or nothing: one bad span refuses
the whole request (400), so a refused request stores nothing.

Each span becomes what Jaeger's OTLP translator makes of it: the span kind
and status as `span.kind`, `otel.status_code`, `error` tags, events as logs,
the parent as a CHILD_OF reference and links as FOLLOWS_FROM, the resource's
attributes as the process' tags and `service.name` as its service.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from pilotfish.objects import Obj

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_DECODED = 8 * 1024 * 1024  # bytes of a request once gunzipped
MAX_ATTRIBUTES = 128  # per span, event or resource: the OpenTelemetry SDK's default limit
MAX_EVENTS = 128
MAX_VALUE = 4096  # characters of one attribute value; longer ones are cut
UNKNOWN_SERVICE = "unknown_service"  # what the SDK names a resource without service.name
_KINDS = {2: "server", 3: "client", 4: "producer", 5: "consumer"}  # 1 (internal): no tag
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
# gRPC's codes, which OTLP/HTTP's Status message carries
INVALID_ARGUMENT = 3


class InvalidExport(ValueError):
    """Why a request cannot be decoded; the receiver answers 400 with it."""


class UnsupportedEncoding(ValueError):
    """A Content-Type or Content-Encoding OTLP/HTTP does not define (415)."""


@dataclass(frozen=True)
class SpanRecord:
    """One span, with what the store indexes beside its Jaeger JSON."""

    trace_id: str  # 32 lower-case hex digits
    span_id: str  # 16
    service: str
    operation: str
    start_us: int
    duration_us: int
    error: bool
    span: Obj  # Jaeger's span, with its process inline under "process"


def decode(body: bytes, content_type: str, content_encoding: str) -> list[SpanRecord]:
    """Every span of an export request; InvalidExport or UnsupportedEncoding."""
    request = parse_request(unzip(body, content_encoding), content_type)
    records = []
    for resource_spans in request.resource_spans:
        records += _resource_records(resource_spans)
    return records


def unzip(body: bytes, content_encoding: str) -> bytes:
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise UnsupportedEncoding(f'unsupported Content-Encoding "{content_encoding}"')
    try:
        # Read one byte past the limit: a small bomb is refused, not expanded.
        decoded = gzip.GzipFile(fileobj=io.BytesIO(body)).read(MAX_DECODED + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise InvalidExport(f"the gzip body cannot be decompressed: {e}") from e
    if len(decoded) > MAX_DECODED:
        raise InvalidExport(f"the decompressed body is larger than {MAX_DECODED} bytes")
    return decoded


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError) as e:
            raise InvalidExport(f"the body is not an ExportTraceServiceRequest: {e}") from e
        return request
    if content_type == JSON:
        try:
            data = json.loads(body)
            json_format.ParseDict(_ids_to_base64(data), request, ignore_unknown_fields=True)
        except (ValueError, RecursionError, json_format.ParseError) as e:
            raise InvalidExport(f"the body is not an ExportTraceServiceRequest: {e}") from e
        return request
    raise UnsupportedEncoding(
        f'unsupported Content-Type "{content_type}": expected {PROTOBUF} or {JSON}'
    )


def _ids_to_base64(data: Any) -> Any:
    """OTLP's JSON spells trace and span ids in hex where protobuf's JSON
    mapping expects base64: rewrite them before parsing."""
    if not isinstance(data, dict):
        raise InvalidExport("the body is not a JSON object")
    for resource in _list(data, "resourceSpans"):
        for scope in _list(resource, "scopeSpans"):
            for span in _list(scope, "spans"):
                _rewrite_ids(span)
                for link in _list(span, "links"):
                    _rewrite_ids(link)
    return data


def _list(parent: Any, key: str) -> list[Any]:
    found = parent.get(key) if isinstance(parent, dict) else None
    return found if isinstance(found, list) else []


def _rewrite_ids(item: Any) -> None:
    if not isinstance(item, dict):
        return
    for key in _ID_FIELDS:
        value = item.get(key)
        if isinstance(value, str) and value:
            try:
                item[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise InvalidExport(f'{key} "{value[:40]}" is not hexadecimal') from None


def _resource_records(resource_spans: ResourceSpans) -> list[SpanRecord]:
    tags = [_tag(kv) for kv in resource_spans.resource.attributes[:MAX_ATTRIBUTES]]
    service = next((t["value"] for t in tags if t["key"] == "service.name"), UNKNOWN_SERVICE)
    process = {
        "serviceName": str(service),
        "tags": [t for t in tags if t["key"] != "service.name"],
    }
    records = []
    for scope_spans in resource_spans.scope_spans:
        scope_tags = []
        if scope_spans.scope.name:
            scope_tags.append(_string_tag("otel.scope.name", scope_spans.scope.name))
        if scope_spans.scope.version:
            scope_tags.append(_string_tag("otel.scope.version", scope_spans.scope.version))
        for span in scope_spans.spans:
            records.append(_record(span, process, scope_tags))
    return records


def _record(span: Span, process: Obj, scope_tags: list[Obj]) -> SpanRecord:
    trace_id, span_id = _id(span.trace_id, 16, "traceId"), _id(span.span_id, 8, "spanId")
    if span.end_time_unix_nano < span.start_time_unix_nano:
        raise InvalidExport(f"span {span_id}: endTimeUnixNano is before startTimeUnixNano")
    start_us = span.start_time_unix_nano // 1000
    duration_us = (span.end_time_unix_nano - span.start_time_unix_nano) // 1000
    error = span.status.code == Status.STATUS_CODE_ERROR
    jaeger = {
        "traceID": trace_id,
        "spanID": span_id,
        "operationName": span.name,
        "references": _references(span, trace_id),
        "startTime": start_us,
        "duration": duration_us,
        "tags": _span_tags(span, scope_tags),
        "logs": [_log(event) for event in span.events[:MAX_EVENTS]],
        "flags": span.flags & 0xFF or 1,  # the sampled flag: every exported span was sampled
        "process": process,
        "warnings": None,
    }
    service = str(process["serviceName"])
    return SpanRecord(trace_id, span_id, service, span.name, start_us, duration_us, error, jaeger)


def _id(raw: bytes, size: int, name: str) -> str:
    if len(raw) != size or not any(raw):
        raise InvalidExport(f"{name} must be {size} bytes, not all zero (got {raw.hex()!r})")
    return raw.hex()


def _references(span: Span, trace_id: str) -> list[Obj]:
    references = []
    if span.parent_span_id:
        parent = _id(span.parent_span_id, 8, "parentSpanId")
        references.append({"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent})
    for link in span.links:
        references.append(
            {
                "refType": "FOLLOWS_FROM",
                "traceID": _id(link.trace_id, 16, "links.traceId"),
                "spanID": _id(link.span_id, 8, "links.spanId"),
            }
        )
    return references


def _span_tags(span: Span, scope_tags: list[Obj]) -> list[Obj]:
    tags = [_tag(kv) for kv in span.attributes[:MAX_ATTRIBUTES]]
    if span.kind in _KINDS:
        tags.append(_string_tag("span.kind", _KINDS[span.kind]))
    if span.status.code == Status.STATUS_CODE_ERROR:
        tags.append(_string_tag("otel.status_code", "ERROR"))
        tags.append({"key": "error", "type": "bool", "value": True})
    elif span.status.code == Status.STATUS_CODE_OK:
        tags.append(_string_tag("otel.status_code", "OK"))
    if span.status.message:
        tags.append(_string_tag("otel.status_description", span.status.message))
    return tags + scope_tags


def _log(event: Span.Event) -> Obj:
    fields = [_string_tag("event", event.name)]
    fields += [_tag(kv) for kv in event.attributes[:MAX_ATTRIBUTES]]
    return {"timestamp": event.time_unix_nano // 1000, "fields": fields}


def _string_tag(key: str, value: str) -> Obj:
    return {"key": key, "type": "string", "value": value[:MAX_VALUE]}


def _tag(kv: KeyValue) -> Obj:
    """Jaeger's typed tag for an attribute; arrays and maps as JSON text, as Jaeger keeps them."""
    value: AnyValue = kv.value
    which = value.WhichOneof("value")
    if which == "bool_value":
        return {"key": kv.key, "type": "bool", "value": value.bool_value}
    if which == "int_value":
        return {"key": kv.key, "type": "int64", "value": value.int_value}
    if which == "double_value":
        return {"key": kv.key, "type": "float64", "value": value.double_value}
    if which == "bytes_value":
        encoded = base64.b64encode(value.bytes_value[:MAX_VALUE]).decode()
        return {"key": kv.key, "type": "binary", "value": encoded}
    if which in ("array_value", "kvlist_value"):
        text = json.dumps(json_format.MessageToDict(value)[_camel(which)])
        return _string_tag(kv.key, text)
    return _string_tag(kv.key, value.string_value)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def success(content_type: str) -> tuple[bytes, str]:
    """The empty ExportTraceServiceResponse (every span accepted), in the
    request's encoding."""
    if content_type == JSON:
        return b"{}", JSON
    return bytes(ExportTraceServiceResponse().SerializeToString()), PROTOBUF


def error_body(message: str, content_type: str, code: int = INVALID_ARGUMENT) -> tuple[bytes, str]:
    """OTLP/HTTP's error body: a google.rpc.Status, in the request's encoding
    (protobuf unless the request was JSON)."""
    status = status_pb2.Status(code=code, message=message)
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(status)).encode(), JSON
    return bytes(status.SerializeToString()), PROTOBUF
