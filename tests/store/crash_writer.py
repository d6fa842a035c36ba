"""A writer to be killed: applies ConfigMaps forever, printing `i resourceVersion`
for each write only after the store acknowledged it.

usage: crash_writer.py BACKEND DATA_DIR   (BACKEND names an entry of conftest.BACKENDS)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from store_testkit import BACKENDS, configmap, kinds_registry

from pilotfish.store.resources import ResourceStore

NAMES = 20  # objects rewritten in turn, so the test sees creates and updates


def main(backend: str, data_dir: str) -> None:
    store = ResourceStore(BACKENDS[backend](Path(data_dir))(), kinds=kinds_registry())
    start = int(store.list("", "ConfigMap")[1])
    i = start
    while True:
        written = store.apply(configmap(f"cm-{i % NAMES}", data={"i": str(i)}), manager="writer")
        # One unbuffered write per acknowledgement: a line is either whole or absent.
        os.write(1, f"{i} {written['metadata']['resourceVersion']}\n".encode())
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
