"""Several "hosts" on this machine, as Linux network namespaces, for tests
whose traffic must really cross interfaces.

    from tests.netns.netns import netns  # noqa: F401  (the fixture)

    def test_something(netns: Callable[[int], Network]) -> None:
        net = netns(3)                     # hosts a, b, c; skips if it cannot
        a = net.hosts[0]
        proc = a.popen(["pilotfish", "node", "--address", a.address, ...])
        a.run(["curl", f"http://{net.hosts[1].address}:8080/"])
        a.link_down(); ...; a.link_up()    # cut host a off, then back

Each host is a namespace with one interface, `eth0`, the end of a veth pair
whose other end is a port of the network's bridge in the root namespace;
the bridge holds the subnet's first address (`net.gateway`), so processes
in the root namespace (the test itself, a control plane) reach every host,
and each host reaches them. Hosts get the next addresses, in order.
Loopback is up in each namespace.

Names carry a random tag per Network (`pf` + 6 hex digits), and the
subnet is a random 10.x.y.0/24 no interface of this machine has, so runs
in parallel do not collide. `close()` (the fixture calls it, also when the
test fails) kills every process started through the hosts, then deletes the
veth pairs, the namespaces and the bridge.

Needs root (CAP_NET_ADMIN) and iproute2's `ip`; the fixture skips with the
reason when either is missing or the kernel refuses a namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

NAMES = "abcdefghijklmnopqrstuvwxyz"


class NetnsUnavailable(Exception):
    """This machine cannot make network namespaces; the message says why."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    """One namespace: its name for `ip netns`, its address on the bridge."""

    label: str  # "a", "b", ... as tests name hosts
    netns: str
    address: str
    veth: str  # the bridge-side end, in the root namespace
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside; it is killed (with its process group) at close."""
        kwargs.setdefault("start_new_session", True)
        process: subprocess.Popen[bytes] = subprocess.Popen(self.argv(argv), **kwargs)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 60, **kwargs: Any) -> Any:
        """Run to completion inside; a CompletedProcess (text, output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(argv), timeout=timeout, check=False, **kwargs)

    def link_down(self) -> None:
        """Cut the host off: its cable out of the bridge. Packets to and from
        it are dropped (no reset), as when a host vanishes."""
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.veth, "up")

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)


@dataclass
class Network:
    """A bridge and `count` hosts on it; `gateway` is the bridge's address."""

    tag: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: str
    hosts: list[Host] = field(default_factory=list)

    @classmethod
    def create(cls, count: int) -> Network:
        require_netns()
        if not 1 <= count <= len(NAMES):
            raise ValueError(f"count: 1 to {len(NAMES)} hosts")
        tag = f"pf{secrets.token_hex(3)}"
        subnet = _free_subnet()
        hosts = list(subnet.hosts())
        net = cls(tag, f"{tag}br", subnet, str(hosts[0]))
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            _ip("addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
            for i in range(count):
                net._add_host(NAMES[i], str(hosts[i + 1]))
        except BaseException:
            net.close()
            raise
        return net

    def _add_host(self, label: str, address: str) -> None:
        host = Host(label, f"{self.tag}-{label}", address, f"{self.tag}{label}")
        _ip("netns", "add", host.netns)
        self.hosts.append(host)  # from here on close() removes it, whatever fails next
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        ns = ("-n", host.netns)
        _ip(*ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip(*ns, "link", "set", "eth0", "up")
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "route", "add", "default", "via", self.gateway)

    def close(self) -> None:
        """Everything this network made, gone; safe to call twice."""
        for host in self.hosts:
            host.kill_all()
        for host in self.hosts:
            # The veth first: a deleted namespace is torn down by the kernel
            # later, and its pair with it; deleting one end removes both now.
            with contextlib.suppress(RuntimeError):
                _ip("link", "delete", host.veth)
            with contextlib.suppress(RuntimeError):
                _ip("netns", "delete", host.netns)
        with contextlib.suppress(RuntimeError):
            _ip("link", "delete", self.bridge)
        self.hosts = []


def require_netns() -> None:
    """Raise NetnsUnavailable unless this process may make namespaces."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2's `ip` is not installed")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (CAP_NET_ADMIN)")
    probe = f"pfprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as e:
        raise NetnsUnavailable(f"the kernel refused a network namespace: {e}") from e
    with contextlib.suppress(RuntimeError):
        _ip("netns", "delete", probe)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no address of this machine is in."""
    taken = _local_networks()
    rng = random.Random(secrets.randbits(32))
    for _ in range(100):
        candidate = ipaddress.IPv4Network(f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.0/24")
        if not any(candidate.overlaps(n) for n in taken):
            return candidate
    raise NetnsUnavailable("no free 10.x.y.0/24 subnet for the test network")


def _local_networks() -> list[ipaddress.IPv4Network]:
    done = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=30
    )
    found = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return found


@pytest.fixture
def netns() -> Iterator[Callable[[int], Network]]:
    """`netns(count)`: a Network of `count` hosts, removed after the test
    (also when it fails); skips the test when namespaces are unavailable."""
    made: list[Network] = []

    def make(count: int) -> Network:
        try:
            net = Network.create(count)
        except NetnsUnavailable as e:
            pytest.skip(str(e))
        made.append(net)
        return net

    yield make
    for net in made:
        net.close()
