"""The x-request-id the proxy generates when a request has none: a random
version 4 UUID in its canonical text form, as Envoy's."""

from __future__ import annotations

import uuid

from pilotfish.proxy.exchange import request_id


def test_a_generated_request_id_is_a_canonical_random_uuid() -> None:
    ids = [request_id() for _ in range(200)]
    for value in ids:
        text = value.decode("ascii")
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case hex, 8-4-4-4-12
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
