"""Fixtures for the proxy's end-to-end tests: backends and proxy processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Backend, Proxy, bootstrap, free_port, write_bootstrap

StartProxy = Callable[..., Proxy]
MakeBackend = Callable[..., Backend]


@pytest.fixture
def make_backend() -> Iterator[MakeBackend]:
    """`make_backend("name", fail_first=1, ...)`: a started backend, stopped at teardown."""
    started: list[Backend] = []

    def make(name: str, **attrs: Any) -> Backend:
        backend = Backend(name, **attrs).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.stop()


class ProxyStarter:
    """Starts proxies from static configs; `close` stops them with SIGTERM and
    fails unless each exits 0."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proxies: list[Proxy] = []

    def __call__(
        self,
        listeners: list[dict[str, Any]],
        clusters: list[dict[str, Any]],
        node_metadata: dict[str, Any] | None = None,
    ) -> Proxy:
        admin_port = free_port()
        config = bootstrap(listeners, clusters, admin_port, node_metadata)
        n = len(self.proxies)
        path = write_bootstrap(self.directory, config, f"bootstrap-{n}.yaml")
        proxy = Proxy(path, admin_port, self.directory / f"proxy-{n}.stderr")
        self.proxies.append(proxy)
        proxy.start()
        return proxy

    def close(self) -> None:
        failures = []
        for proxy in self.proxies:
            if proxy.process is None or proxy.process.returncode is not None:
                continue  # never started, or the test stopped it itself
            code = proxy.stop()
            if code != 0:
                failures.append(f"proxy exited {code} on SIGTERM:\n{proxy.stderr()}")
        assert not failures, "\n".join(failures)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[StartProxy]:
    """`start_proxy(listeners, clusters)`: a proxy serving that static config,
    ready (admin /ready 200). At teardown: SIGTERM, and it must exit 0."""
    starter = ProxyStarter(tmp_path)
    yield starter
    starter.close()


@pytest.fixture(scope="module")
def start_module_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartProxy]:
    """As `start_proxy`, for a proxy that a whole module shares."""
    starter = ProxyStarter(tmp_path_factory.mktemp("proxy"))
    yield starter
    starter.close()


@pytest.fixture(scope="module")
def module_backends() -> Iterator[MakeBackend]:
    """As `make_backend`, for backends that a whole module shares."""
    started: list[Backend] = []

    def make(name: str, **attrs: Any) -> Backend:
        backend = Backend(name, **attrs).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.stop()
