"""This host's own address off loopback, for tests that need the control
plane to see a caller from another host without leaving the machine."""

from __future__ import annotations

import socket

import pytest


def outside_address() -> str:
    """An address of this host that is not loopback, as a peer on the network sees it."""
    for probe in ("192.0.2.254", "10.255.255.254", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))  # UDP: nothing is sent
            except OSError:
                continue
            address = str(s.getsockname()[0])
            if not address.startswith("127."):
                return address
    pytest.skip("this host has no non-loopback IPv4 address")
