"""A built-in load tester, so an analysis does not fail for want of traffic:
the `hey` and `curl` commands that Flagger's load tester runs, here parsed
and run in-process (no shell, no subprocess) against mesh services.

A command's host is a mesh service (`reviews-canary`, `reviews-canary.ns`,
or its full name); each request goes to one of the service's instances in
turn, through that instance's sidecar, so the sidecar's Istio metrics see
it. Everything is bounded: duration, rate, concurrency, jobs.
"""

from __future__ import annotations

import http.client
import itertools
import shlex
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pilotfish.api.gotypes import parse_duration_ns

MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 100
MAX_QPS = 1000.0  # per worker, as hey's -q
MAX_JOBS = 32
RESOLVE_EVERY_S = 1.0

# (host, port) -> the (address, port) of each instance serving it; raises
# LookupError with the reason when the host is no mesh service.
Resolver = Callable[[str, int], list[tuple[str, int]]]


class CommandError(ValueError):
    """A command the load tester does not run, and why."""


@dataclass(frozen=True)
class Load:
    """One parsed command."""

    tool: str  # "hey" or "curl"
    host: str
    port: int
    target: str  # path and query
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    duration_s: float = 0.0  # hey -z; 0: run `requests` requests
    requests: int = 1
    concurrency: int = 1
    qps: float = 0.0  # per worker; 0: as fast as answers come
    timeout_s: float = 20.0
    fail_on_error: bool = False  # curl -f: a 4xx/5xx fails the command


@dataclass
class Outcome:
    sent: int = 0
    errors: int = 0  # no answer, or (with fail_on_error) an error status
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, error: str = "") -> None:
        with self.lock:
            self.sent += 1
            if error:
                self.errors += 1
                self.last_error = error


# -- parsing -----------------------------------------------------------------------


def parse_command(command: str) -> Load:
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise CommandError(f"cannot split the command: {e}") from e
    if not words:
        raise CommandError("the command is empty")
    tool = words[0].rsplit("/", 1)[-1]
    if tool == "hey":
        return _hey(words[1:])
    if tool == "curl":
        return _curl(words[1:])
    raise CommandError(f'"{tool}" is not built in: the load tester runs hey and curl commands')


def _hey(args: list[str]) -> Load:
    fields: dict[str, Any] = {"requests": 200, "concurrency": 50}
    headers: list[tuple[str, str]] = []
    flags = {"-n": "requests", "-c": "concurrency", "-q": "qps", "-t": "timeout_s"}
    url = ""
    words = iter(args)
    for word in words:
        if word in flags:
            fields[flags[word]] = _number(word, _next(words, word))
        elif word == "-z":
            fields["duration_s"] = _duration(_next(words, word))
        elif word == "-m":
            fields["method"] = _next(words, word).upper()
        elif word == "-H":
            headers.append(_header(_next(words, word)))
        elif word == "-d":
            fields["body"] = _next(words, word).encode()
        elif word == "-T":
            headers.append(("Content-Type", _next(words, word)))
        elif word.startswith("-"):
            raise CommandError(f"hey: {word} is not supported")
        else:
            url = word
    return _bounded(Load("hey", *_url(url), headers=tuple(headers), **fields))


def _curl(args: list[str]) -> Load:
    fields: dict[str, Any] = {}
    headers: list[tuple[str, str]] = []
    url = ""
    words = iter(args)
    for word in words:
        if word in ("-X", "--request"):
            fields["method"] = _next(words, word).upper()
        elif word in ("-H", "--header"):
            headers.append(_header(_next(words, word)))
        elif word in ("-d", "--data", "--data-raw"):
            fields["body"] = _next(words, word).encode()
            fields.setdefault("method", "POST")
        elif word in ("-m", "--max-time"):
            fields["timeout_s"] = _number(word, _next(words, word))
        elif word in ("-o", "--output"):
            _next(words, word)  # the answer is not kept anyway
        elif word in ("--fail", "-f"):
            fields["fail_on_error"] = True
        elif word in ("--silent", "--show-error") or (
            word.startswith("-") and not word.startswith("--") and set(word[1:]) <= set("sSfL")
        ):
            fields["fail_on_error"] = fields.get("fail_on_error") or "f" in word
        elif word.startswith("-"):
            raise CommandError(f"curl: {word} is not supported")
        else:
            url = word
    return _bounded(Load("curl", *_url(url), headers=tuple(headers), **fields))


def _url(text: str) -> tuple[str, int, str]:
    if not text:
        raise CommandError("the command has no URL")
    parts = urllib.parse.urlsplit(text if "://" in text else "http://" + text)
    if parts.scheme != "http":
        raise CommandError(f"{text}: only http:// URLs of mesh services are supported")
    if not parts.hostname:
        raise CommandError(f"{text}: the URL has no host")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise CommandError(f"{text}: {e}") from e
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, target


def _bounded(load: Load) -> Load:
    if not 0 <= load.duration_s <= MAX_DURATION_S:
        raise CommandError(f"-z must be at most {MAX_DURATION_S:.0f}s")
    if not 1 <= load.concurrency <= MAX_CONCURRENCY:
        raise CommandError(f"-c must be between 1 and {MAX_CONCURRENCY}")
    if not 0 <= load.qps <= MAX_QPS:
        raise CommandError(f"-q must be between 0 and {MAX_QPS:.0f}")
    if load.requests < 1 or load.timeout_s <= 0:
        raise CommandError("-n and -t must be positive")
    return load


def _next(words: Iterator[str], flag: str) -> str:
    value = next(words, None)
    if value is None:
        raise CommandError(f"{flag} needs a value")
    return value


def _number(flag: str, text: str) -> float | int:
    try:
        number = float(text)
    except ValueError:
        raise CommandError(f"{flag} needs a number, not {text!r}") from None
    return int(number) if flag in ("-n", "-c") else number


def _duration(text: str) -> float:
    try:
        return parse_duration_ns(text) / 1e9
    except ValueError as e:
        raise CommandError(f"-z: {e}") from e


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise CommandError(f'a header must be "Name: value", not {text!r}')
    return name.strip(), value.strip()


# -- running -------------------------------------------------------------------------


class LoadTester:
    """Runs commands: in the background, one copy of each at a time, or to
    completion with an outcome."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self._running: dict[str, threading.Event] = {}  # command -> its stop flag
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LoadTester({len(self._running)} running)"

    def start(self, command: str) -> bool:
        """Start `command` unless it already runs; False when it did."""
        load = parse_command(command)
        self.resolve(load.host, load.port)  # an unknown service fails now, not later
        with self._lock:
            if command in self._running:
                return False
            if len(self._running) >= MAX_JOBS:
                raise CommandError(f"{MAX_JOBS} load tests already run; wait for one to end")
            stop = self._running[command] = threading.Event()
        threading.Thread(
            target=self._background, args=(command, load, stop), name="loadtest", daemon=True
        ).start()
        return True

    def run(self, command: str, stop: threading.Event | None = None) -> Outcome:
        """Run to the end; the outcome counts what was sent and what failed."""
        load = parse_command(command)
        return drive(load, self.resolve, stop or threading.Event())

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def close(self) -> None:
        with self._lock:
            for stop in self._running.values():
                stop.set()

    def _background(self, command: str, load: Load, stop: threading.Event) -> None:
        try:
            drive(load, self.resolve, stop)
        finally:
            with self._lock:
                self._running.pop(command, None)


def drive(load: Load, resolve: Resolver, stop: threading.Event) -> Outcome:
    outcome = Outcome()
    targets = _Targets(load, resolve)
    deadline = time.monotonic() + load.duration_s if load.duration_s else None
    budget = itertools.count() if deadline else iter(range(load.requests))
    budget_lock = threading.Lock()

    def more() -> bool:
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return False
        with budget_lock:
            return next(budget, None) is not None

    workers = [
        threading.Thread(target=_worker, args=(load, targets, more, outcome, stop), daemon=True)
        for _ in range(min(load.concurrency, load.requests if not deadline else load.concurrency))
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return outcome


def _worker(
    load: Load, targets: _Targets, more: Callable[[], bool], outcome: Outcome, stop: threading.Event
) -> None:
    gap = 1.0 / load.qps if load.qps else 0.0
    connections: dict[tuple[str, int], http.client.HTTPConnection] = {}
    try:
        while more():
            started = time.monotonic()
            outcome.count(_one(load, targets.next(), connections))
            if gap:
                stop.wait(max(0.0, gap - (time.monotonic() - started)))
    finally:
        for conn in connections.values():
            conn.close()


def _one(
    load: Load,
    where: tuple[str, int] | None,
    connections: dict[tuple[str, int], http.client.HTTPConnection],
) -> str:
    """One request; "" when it went well, else what went wrong."""
    if where is None:
        return f"{load.host}:{load.port} has no instances"
    conn = connections.get(where)
    if conn is None:
        conn = connections[where] = http.client.HTTPConnection(*where, timeout=load.timeout_s)
    headers = {"Host": f"{load.host}:{load.port}", "User-Agent": f"pilotfish-{load.tool}"}
    headers.update(load.headers)
    try:
        conn.request(load.method, load.target, body=load.body or None, headers=headers)
        answer = conn.getresponse()
        answer.read()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        connections.pop(where, None)
        return f"{load.host}:{load.port}: {e or type(e).__name__}"
    if load.fail_on_error and answer.status >= 400:
        return f"{load.host}:{load.port}{load.target} answered {answer.status}"
    return ""


class _Targets:
    """The service's instances in turn, looked up again every second."""

    def __init__(self, load: Load, resolve: Resolver) -> None:
        self.load, self.resolve = load, resolve
        self._lock = threading.Lock()
        self._found: Sequence[tuple[str, int]] = ()
        self._at = -RESOLVE_EVERY_S
        self._turn = itertools.count()

    def next(self) -> tuple[str, int] | None:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= RESOLVE_EVERY_S:
                try:
                    self._found = self.resolve(self.load.host, self.load.port)
                except LookupError:
                    self._found = ()
                self._at = now
            if not self._found:
                return None
            return self._found[next(self._turn) % len(self._found)]
