"""A file of credentials a running control plane re-reads when it changes,
so `pilotfish token create` and `token delete` act at once."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pilotfish.api.errors import BadRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


class WatchedFile(Generic[T]):
    """`load()`'s result, loaded again when the file is replaced (each write is
    a new file); a damaged file gives `empty` (it admits no one) and an error
    log naming the file, never its contents."""

    def __init__(self, path: Path, load: Callable[[], T], empty: T) -> None:
        self.path = path
        self._load = load
        self._empty = empty
        self._seen: tuple[int, int, int] | None = None
        self._value = empty

    def __repr__(self) -> str:
        return f"WatchedFile({str(self.path)!r})"

    def current(self) -> T:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return self._empty
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        if seen != self._seen:
            try:
                self._value = self._load()
            except (ValueError, BadRequest) as e:
                log.error("ignoring the tokens in %s: %s", self.path, e)
                self._value = self._empty
            self._seen = seen
        return self._value


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A tokens file's JSON object; {} if there is none; BadRequest naming
    `what` it should map if it is not an object."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    if not isinstance(loaded, dict):
        raise BadRequest(f"{path}: expected a JSON object of {what}")
    return loaded
