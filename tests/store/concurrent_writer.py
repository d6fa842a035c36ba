"""One of several writer processes sharing a store, as control planes on
different hosts share etcd: each adds `count` to a counter with optimistic
concurrency (read, update with the resourceVersion read, again on Conflict)
and applies its own label to the same object.

usage: concurrent_writer.py BACKEND DATA_DIR WRITER COUNT
"""

from __future__ import annotations

import sys
from pathlib import Path

from store_testkit import BACKENDS, configmap, kinds_registry

from pilotfish.api.errors import Conflict
from pilotfish.store import Key
from pilotfish.store.resources import ResourceStore

COUNTER = Key("", "ConfigMap", "default", "counter")


def main(backend: str, data_dir: str, writer: str, count: int) -> None:
    store = ResourceStore(BACKENDS[backend](Path(data_dir))(), kinds=kinds_registry())
    for i in range(count):
        while True:
            live = store.get(COUNTER)
            live["data"] = {"n": str(int(live["data"]["n"]) + 1)}
            try:
                store.update(live, manager=writer)
                break
            except Conflict:
                continue  # another writer got in between: read again
        store.apply(configmap("labels", labels={f"{writer}-{i}": "x"}), manager=f"{writer}-{i}")
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
