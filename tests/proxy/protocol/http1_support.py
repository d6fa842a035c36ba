"""Drive the HTTP/1.1 core the way a shell would, and put its events in a form
where different ways of splitting the same bytes compare equal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pilotfish.proxy.protocol.http1 import RequestParser, ResponseParser, Tunnel


def merge(events: Iterable[Any]) -> list[Any]:
    """Adjacent body pieces (and tunnel pieces) joined: how bytes were split is not behaviour."""
    merged: list[Any] = []
    for event in events:
        if merged and isinstance(event, bytes) and isinstance(merged[-1], bytes):
            merged[-1] += event
        elif merged and isinstance(event, Tunnel) and isinstance(merged[-1], Tunnel):
            merged[-1] = Tunnel(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def drain(parser: RequestParser) -> list[Any]:
    """What a shell that finishes each request at once would see after a feed."""
    events: list[Any] = []
    while parser.paused:
        events += parser.next_message()
    return events


def requests(chunks: Iterable[bytes], parser: RequestParser | None = None) -> list[Any]:
    parser = parser or RequestParser()
    events: list[Any] = []
    for chunk in chunks:
        events += parser.feed(chunk)
        events += drain(parser)
    return merge(events)


def responses(chunks: Iterable[bytes], methods: list[bytes]) -> list[Any]:
    """Feed an upstream's bytes, announcing methods[i] before the i-th response."""
    parser = ResponseParser()
    methods = list(methods)
    events: list[Any] = parser.next_message(methods.pop(0) if methods else b"GET")
    for chunk in chunks:
        events += parser.feed(chunk)
        while parser.paused:
            events += parser.next_message(methods.pop(0) if methods else b"GET")
    return merge(events)


def splits(data: bytes) -> Iterable[list[bytes]]:
    """Every way of cutting `data` in two, and one byte at a time."""
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]
