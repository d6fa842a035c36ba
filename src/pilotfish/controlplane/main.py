"""`pilotfish controlplane`: open the store, serve the API and xDS, stop cleanly
on a signal.

Start-up binds the API port first, so a port in use fails before a store is
opened or a config written; anything opened before a later failure is closed
again. The registry follows the store and the instance registrations; the ADS
server (127.0.0.1:15010 by default, as istiod's plaintext port) pushes what
they produce. Only validated config is ever stored, so only validated config
reaches a proxy.
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

from pilotfish.analysis import warnings_for
from pilotfish.api.validation import validate_or_raise, with_defaults
from pilotfish.config import ClientConfig, write_client_config
from pilotfish.controlplane import analysis_status
from pilotfish.controlplane.analysis_status import StatusWriter
from pilotfish.controlplane.analyze_api import AnalyzeApi
from pilotfish.controlplane.api import Api, chain
from pilotfish.controlplane.auth import load_or_create_token
from pilotfish.controlplane.http import ApiServer
from pilotfish.controlplane.loadtester_api import LoadTesterApi
from pilotfish.controlplane.mesh_api import MeshApi
from pilotfish.registry.instances import InstanceRegistry
from pilotfish.registry.mesh import MeshRegistry
from pilotfish.rollout.service import RolloutService
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend
from pilotfish.xds.server import DEFAULT_LISTEN as DEFAULT_XDS_LISTEN
from pilotfish.xds.server import AdsServer, BindError

log = logging.getLogger("pilotfish.controlplane")

DEFAULT_LISTEN = "127.0.0.1:15080"
STORE_FILE = "store.db"


class StartError(Exception):
    """Why the control plane could not start, in one line."""


class ControlPlane:
    """The running parts: the API server over a store, the registry, the ADS
    server, and how to stop them."""

    def __init__(
        self,
        server: ApiServer,
        store: ResourceStore,
        data_dir: Path,
        mesh: MeshRegistry | None = None,
        ads: AdsServer | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.data_dir = data_dir
        self.mesh = mesh
        self.ads = ads
        self.rollout: RolloutService | None = None
        self.loadtester: LoadTesterApi | None = None
        self.analysis: StatusWriter | None = None

    def __repr__(self) -> str:
        return f"ControlPlane({self.server.url}, data_dir={str(self.data_dir)!r})"

    @classmethod
    def open(
        cls,
        data_dir: Path,
        listen: str = DEFAULT_LISTEN,
        config_path: Path | None = None,
        xds_listen: str | None = None,
    ) -> ControlPlane:
        """Everything started and serving, or nothing left running. Without
        `xds_listen` there is no ADS server (the registry API still works): a
        library caller does not take the well-known port unless it asks."""
        server = _bind(listen)
        store: ResourceStore | None = None
        plane: ControlPlane | None = None
        try:
            _make_data_dir(data_dir)
            token = load_or_create_token(data_dir)
            store = ResourceStore(
                SqliteBackend(data_dir / STORE_FILE),
                validate=validate_or_raise,
                default=with_defaults,
            )
            plane = cls(server, store, data_dir)
            plane._start_mesh(xds_listen)
            loadtester = plane._start_rollout()
            if analysis_status.enabled():
                plane.analysis = StatusWriter(store)
                plane.analysis.start()
            extensions = chain(MeshApi(plane.instances, plane.ads), AnalyzeApi(store), loadtester)
            server.api = Api(store, token, analyze=warnings_for, extension=extensions)
            write_client_config(ClientConfig(server.url, token), config_path)
        except BaseException as e:
            if plane is not None:
                plane.close()
            else:
                server.stop()
                if store is not None:
                    store.close()
            reason = _start_error(e, data_dir)
            if reason is None:
                raise
            raise reason from e
        return plane

    @property
    def instances(self) -> InstanceRegistry:
        assert self.mesh is not None
        return self.mesh.instances

    def _start_mesh(self, xds_listen: str | None) -> None:
        self.mesh = MeshRegistry(self.store)
        self.mesh.start()
        if xds_listen is None:
            return
        self.ads = AdsServer(self.mesh.snapshot, xds_listen)
        self.mesh.add_listener(self.ads.changed)
        self.ads.start()

    def _start_rollout(self) -> LoadTesterApi:
        """The rollout controller, its metrics sampler and the load tester."""
        assert self.mesh is not None
        self.loadtester = LoadTesterApi(self.mesh.snapshot)
        self.rollout = RolloutService(self.store, self.instances.instances)
        self.rollout.start()
        return self.loadtester

    def close(self) -> None:
        """Stop what was started, newest first; safe on a half-open plane."""
        if self.analysis is not None:
            self.analysis.stop()
        if self.rollout is not None:
            self.rollout.stop()
        if self.loadtester is not None:
            self.loadtester.close()
        if self.ads is not None:
            self.ads.stop()
        if self.mesh is not None:
            self.mesh.stop()
        self.server.stop()
        self.store.close()


def run_controlplane(
    data_dir: Path,
    listen: str = DEFAULT_LISTEN,
    config_path: Path | None = None,
    xds_listen: str | None = DEFAULT_XDS_LISTEN,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly: 0; 1 if it cannot start."""
    _configure_logging()
    try:
        plane = ControlPlane.open(data_dir, listen, config_path, xds_listen)
    except StartError as e:
        log.error("error: %s", e)
        return 1
    stop = threading.Event()
    _stop_on_signals(stop)
    serving = plane.server.start()
    log.info("pilotfish control plane serving on %s (data in %s)", plane.server.url, data_dir)
    if plane.ads is not None:
        log.info(
            "xDS (ADS) serving on %s", plane.ads.listen.rpartition(":")[0] + f":{plane.ads.port}"
        )
    while not stop.wait(0.5) and serving.is_alive():
        pass
    log.info("pilotfish control plane stopping")
    plane.close()
    return 0


def _start_error(error: BaseException, data_dir: Path) -> StartError | None:
    """A one-line reason for what users can fix (permissions, a bad store file);
    anything else is a bug and keeps its traceback."""
    if isinstance(error, BindError):
        return StartError(f"{error} (is another control plane running? see --xds-port)")
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
    parser.add_argument("--xds-port", type=int, default=15010, help="ADS port on 127.0.0.1")
    args = parser.parse_args(argv)
    return run_controlplane(args.data_dir, args.listen, args.config, xds_listen(args.xds_port))


def xds_listen(port: int, host: str = "127.0.0.1") -> str | None:
    """The ADS address for `--xds-port`; a negative port turns xDS off."""
    return None if port < 0 else f"{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
