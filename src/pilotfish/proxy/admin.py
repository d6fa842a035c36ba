"""The admin listener (default 127.0.0.1:15000), as Envoy's: /ready,
/server_info, /config_dump, /clusters, /stats, /stats/prometheus, /drain,
/quitquitquit.

Low-rate and local, so requests are read whole with asyncio streams; the
data path has its own protocol code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from pilotfish import __version__

log = logging.getLogger("pilotfish.proxy.admin")
Handler = Callable[[], tuple[int, str, bytes]]
MAX_REQUEST_HEAD = 16 * 1024
TEXT, JSON = "text/plain; charset=utf-8", "application/json"


@dataclass
class AdminRoutes:
    """What each admin path answers: (status, content type, body)."""

    get: dict[str, Handler]
    post: dict[str, Handler]


async def serve_admin(sock: socket.socket, routes: AdminRoutes) -> asyncio.Server:
    """Answers on `sock`, a listening socket."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await _answer(reader, routes)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }.get(status, "OK")
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        try:
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(on_client, sock=sock, limit=MAX_REQUEST_HEAD)


async def _answer(reader: asyncio.StreamReader, routes: AdminRoutes) -> tuple[int, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(request_line) != 3:
        return 400, TEXT, b"malformed request line\n"
    method, target = request_line[0], request_line[1].split("?", 1)[0]
    table = routes.get if method in ("GET", "HEAD") else routes.post if method == "POST" else None
    if table is None:
        return 405, TEXT, b"method not allowed\n"
    handler = table.get(target)
    if handler is None:
        other = routes.post if table is routes.get else routes.get
        return (405, TEXT, b"use POST\n") if target in other else (404, TEXT, b"not found\n")
    return handler()


def server_info(state: str) -> bytes:
    """Envoy's /server_info, its version and state, and whether this
    sidecar's data path runs compiled: "compiled": "mypyc" or "interpreted",
    and the modules that are."""
    # Imported here: not every sidecar is asked (compiled.py keeps its build checks to itself).
    from pilotfish.proxy import compiled

    modules = compiled.running()
    data_path = {"compiled": "mypyc" if modules else "interpreted", "modules": modules}
    info = {"version": f"pilotfish/{__version__}", "state": state, "data_path": data_path}
    return json.dumps(info, indent=2).encode()


def config_dump(
    raw: dict[str, dict[str, Message]], extra: list[dict[str, Any]] | None = None
) -> bytes:
    """Envoy-like /config_dump: the resources in force, by type, as JSON;
    `extra`: dumps already in Envoy's shape (the SecretsConfigDump)."""
    configs = [
        {"@type": type_url, "resources": [json_format.MessageToDict(m) for m in msgs.values()]}
        for type_url, msgs in raw.items()
    ] + list(extra or [])
    return json.dumps({"configs": configs}, indent=2).encode()
