"""Bookinfo's ratings service: the stars each reviewer gave, at /ratings/ID.

With REDIS_ADDR (host:port) the stars live in redis, as Istio's ratings v2
keeps them in a database: the app speaks RESP to what looks like a local
redis, which is its sidecar's declared upstream (the Workload's
spec.upstreams), so the mesh carries, secures and measures that TCP traffic
too. Without it, or while redis cannot be reached, the stars are the
built-in ones: the page never breaks for the demo's sake.
"""

from __future__ import annotations

import json
import os
import socket

import common

VERSION = os.environ.get("SERVICE_VERSION", "v1")
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}
REDIS_ADDR = os.environ.get("REDIS_ADDR", "")
KEY = "bookinfo:ratings"


def resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words
    )


def redis_call(*words: str) -> bytes | None:
    """One command on a connection of its own; the reply's payload (a bulk
    string's bytes, a simple string's text), None for nil."""
    host, _, port = REDIS_ADDR.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(resp(*words))
        reply = b""
        while b"\r\n" not in reply or (reply[:1] == b"$" and not _whole(reply)):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            reply += chunk
    head, _, rest = reply.partition(b"\r\n")
    if head[:1] == b"-":
        raise OSError(head[1:].decode(errors="replace"))
    if head == b"$-1":
        return None
    return rest[: int(head[1:])] if head[:1] == b"$" else head[1:]


def _whole(reply: bytes) -> bool:
    head, _, rest = reply.partition(b"\r\n")
    return head == b"$-1" or len(rest) >= int(head[1:]) + 2


def ratings() -> dict[str, int]:
    """From redis, stored there first if it has none; the built-in ones
    when there is no redis to ask."""
    if not REDIS_ADDR:
        return RATINGS
    try:
        stored = redis_call("GET", KEY)
        if stored is None:
            redis_call("SET", KEY, json.dumps(RATINGS))
            return RATINGS
        return {str(k): int(v) for k, v in json.loads(stored).items()}
    except (OSError, ValueError) as e:
        print(f"ratings: redis at {REDIS_ADDR}: {e}; using the built-in stars", flush=True)
        return RATINGS


class RatingsHandler(common.Handler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/health":
            self.send_json(200, {"status": "Ratings is healthy"})
        elif path.startswith("/ratings/"):
            book_id = path.removeprefix("/ratings/")
            if not book_id.isdigit():
                self.send_json(400, {"error": "please provide numeric product ID"})
                return
            self.send_json(200, {"id": int(book_id), "ratings": ratings()})
        else:
            self.send_json(404, {"error": "Not Found"})

    do_HEAD = do_GET


if __name__ == "__main__":
    common.serve(RatingsHandler, f"ratings-{VERSION}")
