"""Is a TCP port free to listen on, and if not, who holds it.

The demo checks its ports before starting anything, so a port in use fails
at once with its number, the process that listens on it (found as `ss -ltnp`
finds it: the socket's inode in /proc/net/tcp{,6}, then the process whose
/proc/PID/fd links to that socket) and the flag that moves it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from pilotfish.cli.commands import CliError

PROC = Path("/proc")
COMMAND_WIDTH = 80  # a holder's command line, cut to one readable line
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def in_use(host: str, port: int) -> bool:
    """True if nothing can listen on host:port now (SO_REUSEADDR, as servers
    bind, so a socket in TIME_WAIT does not count as a holder)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def holder(port: int, proc: Path = PROC) -> str:
    """`pid 1234 (python3 -m http.server 8080)` for the process listening on
    `port`, or "" when it cannot be found (another user's process, no /proc)."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return ""
    for fd_dir in proc.glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if _socket_inode(os.readlink(fd)) in inodes:
                        return _describe(fd_dir.parent)
    return ""


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != _LISTEN:
                    continue
                if int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _socket_inode(link: str) -> str:
    """ "123" of a /proc/PID/fd link "socket:[123]"; "" for anything else."""
    return link[8:-1] if link.startswith("socket:[") else ""


def _describe(pid_dir: Path) -> str:
    try:
        argv = pid_dir.joinpath("cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    command = " ".join(" ".join(a.decode(errors="replace") for a in argv if a).split())
    if len(command) > COMMAND_WIDTH:
        command = command[: COMMAND_WIDTH - 3] + "..."
    return f"pid {pid_dir.name}" + (f" ({command})" if command else "")


def check_free(ports: list[tuple[str, int, str]]) -> None:
    """Raise PortInUse for the first (host, port, flag) that cannot be bound."""
    for host, port, flag in ports:
        if port > 0 and in_use(host, port):
            raise PortInUse(host, port, flag)


class PortInUse(CliError):
    def __init__(self, host: str, port: int, flag: str) -> None:
        who = holder(port)
        held = f"by {who}" if who else "by another process"
        super().__init__(
            f"port {port} on {host} is already in use ({held}); stop it, or choose another "
            f"port with {flag}"
        )
