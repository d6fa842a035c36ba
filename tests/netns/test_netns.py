"""The network-namespace harness itself: hosts reach each other and the
root namespace over the bridge, a link taken down cuts a host off and back
on, and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from tests.netns.netns import Host, NetnsUnavailable, Network, netns  # noqa: F401  (the fixture)

SERVER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode())
except OSError as e:
    print("error", type(e).__name__)
"""


def serve(host: Host, address: str) -> int:
    process = host.popen([sys.executable, "-c", SERVER, address], stdout=subprocess.PIPE)
    assert process.stdout is not None
    return int(process.stdout.readline())


def call(host: Host, address: str, port: int, timeout: float = 2.0) -> str:
    done = host.run([sys.executable, "-c", CLIENT, address, str(port), str(timeout)])
    return str(done.stdout).strip()


def names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_hosts_reach_each_other_and_the_root_namespace(
    netns: Callable[[int], Network],  # noqa: F811
) -> None:
    net = netns(3)
    a, b, c = net.hosts
    assert len({a.address, b.address, c.address, net.gateway}) == 4
    port = serve(b, b.address)
    assert call(a, b.address, port) == a.address  # b saw a's own address: no NAT
    assert call(c, b.address, port) == c.address
    # b's service is not on loopback in a: the namespaces are really apart
    assert call(a, "127.0.0.1", port).startswith("error")
    # the root namespace (where a control plane may run) reaches b, and b it
    root = subprocess.run(
        [sys.executable, "-c", CLIENT, b.address, str(port), "2"], capture_output=True, text=True
    )
    assert root.stdout.strip() == net.gateway


def test_a_link_down_cuts_the_host_off_until_it_is_up(netns: Callable[[int], Network]) -> None:  # noqa: F811
    net = netns(2)
    a, b = net.hosts
    port = serve(b, b.address)
    assert call(a, b.address, port) == a.address
    b.link_down()
    assert call(a, b.address, port, timeout=1.0) in ("error TimeoutError", "error OSError")
    b.link_up()
    assert call(a, b.address, port, timeout=5.0) == a.address


def test_close_removes_everything_and_kills_the_processes() -> None:
    try:
        net = Network.create(2)
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    process = net.hosts[0].popen(["sleep", "600"])
    tag = net.tag
    assert tag in names() and tag in links()
    net.close()
    assert process.poll() is not None
    assert tag not in names() and tag not in links()
    net.close()  # twice is fine


def test_names_and_subnets_differ_between_networks(netns: Callable[[int], Network]) -> None:  # noqa: F811
    one, two = netns(1), netns(1)
    assert one.tag != two.tag
    assert not one.subnet.overlaps(two.subnet)
