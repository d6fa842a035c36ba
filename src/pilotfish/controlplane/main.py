"""`pilotfish controlplane`: open the store, serve the API, stop cleanly on a signal.

Start-up binds the port first, so a port in use fails before a store is opened
or a config written; anything opened before a later failure is closed again.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType

from pilotfish.api.validation import analyze, validate_or_raise
from pilotfish.config import ClientConfig, write_client_config
from pilotfish.controlplane.api import Api
from pilotfish.controlplane.auth import load_or_create_token
from pilotfish.controlplane.http import ApiServer
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

log = logging.getLogger("pilotfish.controlplane")

DEFAULT_LISTEN = "127.0.0.1:15080"
STORE_FILE = "store.db"


class StartError(Exception):
    """Why the control plane could not start, in one line."""


class ControlPlane:
    """The running parts: the API server over a store, and how to stop them."""

    def __init__(self, server: ApiServer, store: ResourceStore, data_dir: Path) -> None:
        self.server = server
        self.store = store
        self.data_dir = data_dir

    def __repr__(self) -> str:
        return f"ControlPlane({self.server.url}, data_dir={str(self.data_dir)!r})"

    @classmethod
    def open(
        cls, data_dir: Path, listen: str = DEFAULT_LISTEN, config_path: Path | None = None
    ) -> ControlPlane:
        server = _bind(listen)
        store: ResourceStore | None = None
        try:
            _make_data_dir(data_dir)
            token = load_or_create_token(data_dir)
            store = ResourceStore(SqliteBackend(data_dir / STORE_FILE), validate=validate_or_raise)
            server.api = Api(store, token, analyze=analyze)
            write_client_config(ClientConfig(server.url, token), config_path)
        except BaseException as e:
            server.stop()
            if store is not None:
                store.close()
            reason = _start_error(e, data_dir)
            if reason is None:
                raise
            raise reason from e
        return cls(server, store, data_dir)

    def close(self) -> None:
        self.server.stop()
        self.store.close()


def run_controlplane(
    data_dir: Path, listen: str = DEFAULT_LISTEN, config_path: Path | None = None
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly: 0; 1 if it cannot start."""
    _configure_logging()
    try:
        plane = ControlPlane.open(data_dir, listen, config_path)
    except StartError as e:
        log.error("error: %s", e)
        return 1
    stop = threading.Event()
    _stop_on_signals(stop)
    serving = plane.server.start()
    log.info("pilotfish control plane serving on %s (data in %s)", plane.server.url, data_dir)
    while not stop.wait(0.5) and serving.is_alive():
        pass
    log.info("pilotfish control plane stopping")
    plane.close()
    return 0


def _start_error(error: BaseException, data_dir: Path) -> StartError | None:
    """A one-line reason for what users can fix (permissions, a bad store file);
    anything else is a bug and keeps its traceback."""
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return StartError(f"cannot start:{where}: {error.strerror or error}")
    if isinstance(error, sqlite3.Error):
        return StartError(f"cannot open the store {data_dir / STORE_FILE}: {error}")
    return None


def _bind(listen: str) -> ApiServer:
    try:
        return ApiServer(listen)
    except ValueError as e:
        raise StartError(str(e)) from e
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartError(
                f"cannot listen on {listen}: the address is already in use "
                "(is another control plane running?)"
            ) from e
        raise StartError(f"cannot listen on {listen}: {e.strerror or e}") from e


def _make_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilotfish.controlplane.main")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".pilotfish" / "data")
    parser.add_argument("--listen", default=DEFAULT_LISTEN)
    parser.add_argument("--config", type=Path, default=None, help="client config to write")
    args = parser.parse_args(argv)
    return run_controlplane(args.data_dir, args.listen, args.config)


if __name__ == "__main__":
    sys.exit(main())
