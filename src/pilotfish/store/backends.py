"""Choosing a backend by name: `--store sqlite` (the default: a file in the
data directory) or `--store etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for
TLS, with kube-apiserver's `--etcd-cafile/--etcd-certfile/--etcd-keyfile`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pilotfish.store.etcd import DEFAULT_PREFIX, EtcdBackend, check_prefix
from pilotfish.store.etcd_client import EtcdClient, Tls
from pilotfish.store.sqlite import SqliteBackend
from pilotfish.store.types import Backend

SQLITE = "sqlite"
STORE_FILE = "store.db"
_USAGE = "expected sqlite, etcd://HOST:PORT[,HOST:PORT...] or etcds://HOST:PORT[,HOST:PORT...]"


@dataclass(frozen=True)
class StoreOptions:
    """What the command line says about the store."""

    url: str = SQLITE
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_cafile: Path | None = None
    etcd_certfile: Path | None = None
    etcd_keyfile: Path | None = None

    def check(self) -> None:
        """Raise ValueError, saying what is wrong, unless the options make sense."""
        if self.url != SQLITE:
            etcd_endpoints(self.url)
            check_prefix(self.etcd_prefix)
        tls = (self.etcd_cafile, self.etcd_certfile, self.etcd_keyfile)
        if any(tls) and not self.url.startswith("etcds://"):
            raise ValueError(
                "--etcd-cafile, --etcd-certfile and --etcd-keyfile need an etcds:// store"
            )
        if (self.etcd_certfile is None) != (self.etcd_keyfile is None):
            raise ValueError("--etcd-certfile and --etcd-keyfile go together")


def etcd_endpoints(url: str) -> list[str]:
    """The HOST:PORT list of an etcd:// or etcds:// URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds") or not rest:
        raise ValueError(f'--store "{url}": {_USAGE}')
    endpoints = rest.split(",")
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in endpoint:
            raise ValueError(f'--store "{url}": "{endpoint}" is not HOST:PORT; {_USAGE}')
    return endpoints


def open_backend(options: StoreOptions, data_dir: Path) -> Backend:
    """The backend the options name, ready: etcd is asked once, so a wrong
    address or certificate fails here rather than on the first request."""
    options.check()
    if options.url == SQLITE:
        return SqliteBackend(data_dir / STORE_FILE)
    tls = None
    if options.url.startswith("etcds://"):
        tls = Tls(
            _read(options.etcd_cafile), _read(options.etcd_certfile), _read(options.etcd_keyfile)
        )
    client = EtcdClient(etcd_endpoints(options.url), tls)
    backend = EtcdBackend(client, prefix=options.etcd_prefix)
    try:
        backend.ping()
    except BaseException:
        backend.close()
        raise
    return backend


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()
