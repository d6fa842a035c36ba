"""The leader election shell: etcd calls and a thread around leader.step().

The leader holds one key, created only if absent (a transaction on its
create_revision) and attached to an etcd lease of `Timing.lease` seconds that
it renews every `Timing.retry` seconds. Followers look every `retry` seconds,
or when etcd says the holder's lease runs out if sooner, and take the key once
it is gone: revoked by a leader that stopped, or expired with the lease of one
that died. Work that must happen once asks leading().
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pilotfish.api.errors import ApiError
from pilotfish.controlplane.leader import (
    Acquired,
    Command,
    Held,
    Input,
    Renewed,
    RenewFailed,
    State,
    Tick,
    Timing,
    acting,
    step,
)
from pilotfish.store.etcd_client import EQUAL, TARGET_CREATE, EtcdClient, message
from pilotfish.store.types import FenceLost

log = logging.getLogger("pilotfish.election")


def identity() -> str:
    """Who a leader is, as client-go names it: host name and a unique suffix."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class Elector:
    def __init__(
        self,
        client: EtcdClient,
        key: str,
        *,
        timing: Timing | None = None,
        on_start: Callable[[], None] = lambda: None,
        on_stop: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = key.encode()
        self.identity = identity()
        self.timing = timing or Timing()
        self._on_start, self._on_stop = on_start, on_stop
        self._clock = clock
        self._state = State()
        self._lease = 0  # the lease our key is attached to, while leading
        self._created = 0  # our key's create_revision, while leading: what fences our writes
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Elector({self.key.decode()!r}, {self.identity}, {self._state.role})"

    def leading(self) -> bool:
        """Whether to act now: leading, and renewed within the renew deadline."""
        # No lock: the state is replaced whole, and the thread may be in a slow call.
        return acting(self._state, self._clock(), self.timing)

    def fence(self) -> Any:
        """The etcd Compare a leader's writes carry (EtcdBackend.fenced): the
        election key is still the one this elector created. A leader whose
        lease was lost, even while it was paused and had not noticed, then has
        its writes refused by etcd. FenceLost at once when not leading."""
        created = self._created
        if not created or not self.leading():
            raise FenceLost(f"{self.key.decode()}: this control plane does not lead")
        return message(
            "Compare", result=EQUAL, target=TARGET_CREATE, key=self.key, create_revision=created
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=repr(self), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop acting, then give the key up at once so another takes over soon."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.timing.retry + 1)
        with self._lock:
            if self._state.role == "leading":
                self._on_stop()
                self._state = State()
            self._revoke()

    def _run(self) -> None:
        tick = min(self.timing.retry / 4, 0.5)
        while not self._stopping.is_set():
            self.feed(Tick(self._clock()))
            self._stopping.wait(tick)

    def feed(self, event: Input) -> None:
        """Apply `event` and carry out the commands, feeding back their answers."""
        pending: list[Input] = [event]
        with self._lock:
            while pending:
                self._state, commands = step(self._state, pending.pop(0), self.timing)
                for command in commands:
                    answer = self._do(command)
                    if answer is not None:
                        pending.append(answer)

    def _do(self, command: Command) -> Input | None:
        if command == "campaign":
            return self._campaign()
        if command == "renew":
            sent = self._clock()
            try:
                # Bounded by the retry period, as client-go bounds each try, so
                # a hung call does not hold the thread past the renew deadline.
                ttl = self.client.keep_alive(self._lease, timeout=self.timing.retry)
                return Renewed(sent, ttl)
            except ApiError as e:
                log.warning("%s: renewing the lease failed: %s", self.key.decode(), e)
                return RenewFailed(self._clock())
        if command == "start":
            log.info("%s: leading as %s", self.key.decode(), self.identity)
            self._on_start()
        else:  # stop
            log.warning("%s: lost the lead; stopped acting", self.key.decode())
            self._on_stop()
            self._revoke()
        return None

    def _campaign(self) -> Input | None:
        """Take the key if it is free; None when etcd cannot be asked."""
        try:
            found = self.client.call("Range", message("RangeRequest", key=self.key)).kvs
            if found:
                return Held(self._clock(), found[0].value.decode(), self._left(found[0].lease))
            sent = self._clock()
            granted = self.client.call(
                "LeaseGrant", message("LeaseGrantRequest", TTL=math.ceil(self.timing.lease))
            )
            self._lease = int(granted.ID)
            put = message(
                "PutRequest", key=self.key, value=self.identity.encode(), lease=self._lease
            )
            absent = message(
                "Compare", result=EQUAL, target=TARGET_CREATE, key=self.key, create_revision=0
            )
            txn = message(
                "TxnRequest", compare=[absent], success=[message("RequestOp", request_put=put)]
            )
            reply = self.client.call("Txn", txn)
            if reply.succeeded:
                self._created = int(reply.header.revision)
                return Acquired(sent)
            self._revoke()  # another got there first
            return Held(self._clock(), "")
        except ApiError as e:
            log.warning("%s: cannot campaign: %s", self.key.decode(), e)
            return None

    def _left(self, lease: int) -> float:
        """Seconds the holder's lease has left, as etcd counts them: whole
        seconds rounded down, so 0 in its last second (and -1 once gone)."""
        reply = self.client.call("LeaseTimeToLive", message("LeaseTimeToLiveRequest", ID=lease))
        return float(max(0, reply.TTL))

    def _revoke(self) -> None:
        """Give up our lease (and so the key) if we have one; etcd would let it expire anyway."""
        lease, self._lease, self._created = self._lease, 0, 0
        if not lease:
            return
        try:
            self.client.call("LeaseRevoke", message("LeaseRevokeRequest", ID=lease))
        except ApiError as e:
            log.info(
                "%s: lease %x not revoked (%s); it expires by itself", self.key.decode(), lease, e
            )
