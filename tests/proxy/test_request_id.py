"""The x-request-id the proxy generates when a request has none: a random
version 4 UUID in its canonical text form, as Envoy's."""

from __future__ import annotations

import os
import uuid

from pilotfish.proxy.forwarding import IDS_PER_BATCH, REQUEST_IDS, RequestIds, uuid4_batch

request_id = REQUEST_IDS.take  # where the proxy takes each generated x-request-id from


def test_a_generated_request_id_is_a_canonical_random_uuid() -> None:
    ids = [request_id() for _ in range(200)]
    for value in ids:
        text = value.decode("ascii")
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case hex, 8-4-4-4-12
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)


def canonical_v4(value: bytes) -> bool:
    parsed = uuid.UUID(value.decode("ascii"))
    return (
        str(parsed) == value.decode("ascii")
        and parsed.version == 4
        and parsed.variant == uuid.RFC_4122
    )


def test_ids_stay_random_v4_uuids_across_batches() -> None:
    """Ids come from batches made at once: every id of several batches, the
    first and last of each included, is its own canonical v4 UUID, and the
    variant digit takes each of its four values."""
    ids = RequestIds()
    taken = [ids.take() for _ in range(3 * IDS_PER_BATCH + 1)]
    assert all(canonical_v4(value) for value in taken)
    assert len(set(taken)) == len(taken)
    assert {value[19:20] for value in taken} == {b"8", b"9", b"a", b"b"}


def test_a_batch_is_count_uuids_back_to_back() -> None:
    batch = uuid4_batch(5)
    assert len(batch) == 5 * 36
    assert all(canonical_v4(batch[at : at + 36]) for at in range(0, len(batch), 36))


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    """A process forked mid-batch (a worker, a restart helper) would share the
    parent's unused ids: the child starts a batch of its own."""
    REQUEST_IDS.discard()
    request_id()  # the parent's batch is new: IDS_PER_BATCH - 1 ids left in it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent, then out at once
        os.close(read_end)
        os.write(write_end, b"".join(request_id() for _ in range(4)))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = b"".join(request_id() for _ in range(4))
    assert len(child) == 4 * 36
    assert child != parent
