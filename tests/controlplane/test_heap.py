"""The control plane's heap keeper: survivors frozen out of the collector's
full passes, and cyclic garbage among them collected on a full pass."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pilotfish.controlplane.heap import HeapKeeper


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def keeper() -> Iterator[HeapKeeper]:
    kept = HeapKeeper(pass_s=3600, full_every=3)
    yield kept
    kept.stop()
    assert gc.get_freeze_count() == 0  # stopping hands everything back


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_survivors_are_frozen_and_new_garbage_still_collected(keeper: HeapKeeper) -> None:
    keeper.step()
    assert gc.get_freeze_count() > 0
    young = cycle()  # made after the freeze: an ordinary collection takes it
    gc.collect()
    assert young() is None


def test_garbage_among_frozen_objects_goes_on_a_full_pass(keeper: HeapKeeper) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    old = weakref.ref(a)
    keeper.step()  # a and b are alive: frozen
    del a, b
    gc.collect()
    assert old() is not None  # frozen: the collector does not look at it
    keeper.step()
    assert old() is not None
    keeper.step()  # the third pass unfreezes first: a full collection
    assert old() is None
