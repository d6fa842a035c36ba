"""How `pilotfish` meets its terminal: standard output that notices a
closed pipe, and kubectl's exit codes for a closed pipe and Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any, TextIO


def whole_writes() -> None:
    """Put standard output on _WholeWrites (not when a test captures it)."""
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = _whole_writes(sys.stdout)


# The shell's codes for a process that SIGINT or SIGPIPE ended, which is how
# kubectl ends on Ctrl-C or when the reader of its output (`| head`) goes away.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


class _WholeWrites(io.RawIOBase):
    """Standard output whose write() writes everything or raises. CPython's
    BufferedWriter drops the rest of a large write the pipe took only part
    of before its reader left (`| head`), and reports success: the closed
    pipe would go unnoticed and the command exit 0."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            sent += os.write(self._fd, view[sent:])
        return sent


def _whole_writes(stream: TextIO) -> TextIO:
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return stream
    stream.flush()
    return io.TextIOWrapper(
        io.BufferedWriter(_WholeWrites(fd)),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=bool(stream.line_buffering),
    )


def closed_pipe() -> int:
    """Quietly: the reader is gone. stdout now points at /dev/null so the
    interpreter's last flush at exit has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE
