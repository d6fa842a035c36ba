"""Watches: initial state, resume from a resourceVersion, expiry, deletes, close."""

from __future__ import annotations

import threading
import time

import pytest
from store_testkit import configmap, vs

from pilotfish.api.errors import BadRequest, Expired
from pilotfish.store import Event, Key, Watch
from pilotfish.store.resources import ResourceStore


def drain(watch: Watch, count: int, timeout: float = 5.0) -> list[Event]:
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        event = watch.next(timeout=max(0.0, deadline - time.monotonic()))
        assert event is not None, f"only {len(events)} of {count} events arrived"
        events.append(event)
    return events


def summary(events: list[Event]) -> list[tuple[str, str, str]]:
    return [
        (e.type, e.object["metadata"]["name"], e.object["metadata"]["resourceVersion"])
        for e in events
    ]


def test_watch_from_now_lists_current_objects_then_streams(store: ResourceStore) -> None:
    a = store.apply(configmap("a"), manager="m")
    b = store.apply(configmap("b"), manager="m")
    watch = store.watch("", "ConfigMap")
    initial = drain(watch, 2)
    assert summary(initial) == [
        ("ADDED", "a", a["metadata"]["resourceVersion"]),
        ("ADDED", "b", b["metadata"]["resourceVersion"]),
    ]
    assert watch.next(timeout=0.05) is None
    c = store.apply(configmap("c", data={"k": "v"}), manager="m")
    (event,) = drain(watch, 1)
    assert event.type == "ADDED" and event.object == c
    assert event.resource_version == int(c["metadata"]["resourceVersion"])
    watch.close()


def test_watch_filters_by_kind_and_namespace(store: ResourceStore) -> None:
    watch = store.watch("", "ConfigMap", namespace="prod")
    store.apply(vs(), manager="m")
    store.apply(configmap("elsewhere"), manager="m")
    store.apply(configmap("here", namespace="prod"), manager="m")
    (event,) = drain(watch, 1)
    assert event.object["metadata"]["name"] == "here"
    assert watch.next(timeout=0.05) is None
    everything = store.watch()
    assert [e.object["kind"] for e in drain(everything, 3)] == [
        "ConfigMap",
        "ConfigMap",
        "VirtualService",
    ]


def test_watch_from_a_revision_replays_in_order(store: ResourceStore) -> None:
    start = store.apply(configmap("a"), manager="m")["metadata"]["resourceVersion"]
    store.apply(configmap("a", data={"x": "1"}), manager="m")
    store.apply(configmap("b"), manager="m")
    store.delete(Key("", "ConfigMap", "default", "a"))
    watch = store.watch("", "ConfigMap", since=start)
    events = drain(watch, 3)
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]
    revisions = [e.resource_version for e in events]
    assert revisions == sorted(revisions) and revisions[0] > int(start)


def test_deleted_event_carries_last_state_at_the_deletes_revision(store: ResourceStore) -> None:
    store.apply(configmap("a", data={"last": "state"}), manager="m")
    watch = store.watch("", "ConfigMap")
    drain(watch, 1)
    deleted = store.delete(Key("", "ConfigMap", "default", "a"))
    (event,) = drain(watch, 1)
    assert event.type == "DELETED"
    assert event.object["data"] == {"last": "state"}
    assert event.object["metadata"]["resourceVersion"] == deleted["metadata"]["resourceVersion"]
    assert event.resource_version == int(deleted["metadata"]["resourceVersion"])


def test_resume_while_another_thread_writes_has_no_gap_and_no_duplicate(
    store: ResourceStore,
) -> None:
    """A client reads some events, drops the connection, and resumes from the
    last resourceVersion it saw, while a writer keeps going."""
    total = 120
    writer_done = threading.Event()

    def writer() -> None:
        for i in range(total):
            store.apply(configmap(f"cm-{i % 7}", data={"i": str(i)}), manager="writer")
        writer_done.set()

    _, start = store.list("", "ConfigMap")
    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    since = start
    while len(seen) < total:
        watch = store.watch("", "ConfigMap", since=since)
        for event in drain(watch, min(17, total - len(seen)), timeout=10):
            seen.append(event.resource_version)
        watch.close()
        since = str(seen[-1])
    thread.join()
    assert writer_done.is_set()
    assert seen == list(range(int(start) + 1, int(start) + total + 1))


def test_too_old_revision_is_expired_after_compaction(make_store) -> None:
    """Revisions are counted from the first write: store-wide ones (etcd's) need
    not start at 1. With SQLite they do: expired below 6, events 7 to 11 kept."""
    store = make_store(history=5)
    first = int(store.apply(configmap("a"), manager="m")["metadata"]["resourceVersion"])
    for i in range(10):
        store.apply(configmap("a", data={"i": str(i)}), manager="m")
    floor = first + 5  # the last 5 of 11 writes are kept
    with pytest.raises(Expired, match=rf"^too old resource version: {first} \({floor}\)$"):
        store.watch("", "ConfigMap", since=str(first))
    kept = store.watch("", "ConfigMap", since=str(floor))
    assert [e.resource_version for e in drain(kept, 5)] == list(range(floor + 1, floor + 6))


def test_a_watch_that_falls_behind_compaction_expires(make_store) -> None:
    store = make_store(history=3)
    first = store.apply(configmap("a"), manager="m")["metadata"]["resourceVersion"]
    watch = store.watch("", "ConfigMap", since=first)
    for i in range(6):
        store.apply(configmap("a", data={"i": str(i)}), manager="m")
    with pytest.raises(Expired, match=f"too old resource version: {first} "):
        watch.next(timeout=1)


def test_malformed_since_is_bad_request(store: ResourceStore) -> None:
    with pytest.raises(BadRequest, match='invalid resourceVersion "abc"'):
        store.watch(since="abc")


def test_close_wakes_a_blocked_next(store: ResourceStore) -> None:
    watch = store.watch("", "ConfigMap")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(watch.next()))
    started = time.monotonic()
    thread.start()
    time.sleep(0.1)
    watch.close()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert results == [None]
    assert time.monotonic() - started < 1.5


def test_next_times_out_with_none(store: ResourceStore) -> None:
    watch = store.watch()
    started = time.monotonic()
    assert watch.next(timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 1.0


def test_blocked_next_wakes_promptly_on_a_write(store: ResourceStore) -> None:
    watch = store.watch("", "ConfigMap")
    got: list[Event | None] = []
    thread = threading.Thread(target=lambda: got.append(watch.next(timeout=5)))
    thread.start()
    time.sleep(0.05)
    written = time.monotonic()
    store.apply(configmap("a"), manager="m")
    thread.join(timeout=5)
    assert got and got[0] is not None and got[0].object["metadata"]["name"] == "a"
    assert time.monotonic() - written < 0.2


def test_watch_sees_writes_made_through_another_connection(make_store) -> None:
    """Another process (here: a second store on the same data) writes; the watch
    still gets the event, by polling the log rather than by a wake-up."""
    first, second = make_store(), make_store()
    watch = first.watch("", "ConfigMap")
    written = second.apply(configmap("from-elsewhere"), manager="m")
    (event,) = drain(watch, 1, timeout=3)
    assert event.object == written
    reopened_revision = first.list("", "ConfigMap")[1]
    assert reopened_revision == written["metadata"]["resourceVersion"]


def test_a_finalized_delete_is_modified_then_deleted(store: ResourceStore) -> None:
    obj = vs()
    obj["metadata"]["finalizers"] = ["example.com/a"]
    rv = store.create(obj, manager="kubectl")["metadata"]["resourceVersion"]
    watch = store.watch(since=rv)
    marked = store.delete(Key("networking.istio.io", "VirtualService", "default", "reviews"))
    marked["metadata"]["finalizers"] = []
    store.update(marked, manager="controller")
    first, second = watch.next(2), watch.next(2)
    assert first is not None and second is not None
    assert (first.type, second.type) == ("MODIFIED", "DELETED")
    assert "deletionTimestamp" in first.object["metadata"]
    watch.close()


def test_closing_the_store_ends_a_blocked_next(make_store) -> None:
    store = make_store()
    watch = store.watch("", "ConfigMap")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(watch.next()))
    thread.start()
    time.sleep(0.1)
    store.close()
    thread.join(timeout=3)
    assert not thread.is_alive()
    assert results == [None]
    assert watch.next(timeout=None) is None
