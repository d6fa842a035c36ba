"""The built-in load tester's engine: the `hey` and `curl` commands that
Flagger's load tester runs (parsed in loadcommands.py), run
in-process on threads, with no shell and no subprocess, against mesh services.

A command's host is a mesh service: NAME (in the canary's namespace),
NAME.NAMESPACE, NAME.NAMESPACE.svc or the full name, or a ServiceEntry host.
Requests go to the service's endpoints, each instance's inbound sidecar (so
the sidecars' Istio metrics count them), in turn, looked up again every
second as instances come and go. Everything is bounded: duration, rate,
concurrency, requests, jobs.

flagger-loadtester's own semantics, kept: a background job is known by its
canary and command, and is not started again while it runs; a job runs at
most an hour (its -timeout default).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pilotfish.api.gotypes import rfc3339
from pilotfish.model.hosts import DOMAIN_SUFFIX, service_fqdn
from pilotfish.model.snapshot import Snapshot
from pilotfish.model.types import Service
from pilotfish.rollout.loadcommands import (
    CURL_TRANSIENT,
    MAX_OUTPUT,
    REDIRECTS,
    CommandError,
    Load,
    Url,
    parse_command,
    parse_url,
)

MAX_JOBS = 16  # jobs at a time, background and blocking
MAX_WORKERS = 400  # worker threads of all jobs together
RESOLVE_EVERY_S = 1.0
log = logging.getLogger("pilotfish.rollout")
Address = tuple[str, int]
# (host, port, namespace of the asking canary) -> the endpoints serving it;
# UnknownHost when the host is no mesh service or has no such port.
Resolver = Callable[[str, int, str], list[Address]]


class UnknownHost(LookupError):
    """A host that is no mesh service, or a port it does not have."""


class Busy(RuntimeError):
    """Too much load already runs (or the load tester is closing)."""


# -- resolving hosts: pure over a snapshot -------------------------------------------


def candidate_names(host: str, namespace: str) -> list[str]:
    """The names a pod's resolver would try for `host` in `namespace`: the
    search path (NAMESPACE.svc.cluster.local, svc.cluster.local,
    cluster.local), then the name as given."""
    host = host.rstrip(".").lower()
    names = [service_fqdn(host, namespace)] if "." not in host else []
    names += [f"{host}.svc.{DOMAIN_SUFFIX}", f"{host}.{DOMAIN_SUFFIX}", host]
    return list(dict.fromkeys(names))


def resolve_host(snap: Snapshot, host: str, port: int, namespace: str) -> list[Address]:
    """The endpoints (sidecar address and port) serving `host:port`."""
    service = find_service(snap, host, namespace)
    if service is None:
        raise UnknownHost(f'"{host}" is not a service of the mesh')
    if service.port(port) is None:
        ports = ", ".join(str(p.port) for p in service.ports) or "none"
        raise UnknownHost(f'service "{host}" has no port {port} (its ports: {ports})')
    return [(e.address, e.port) for e in snap.endpoints(service, port)]


def find_service(snap: Snapshot, host: str, namespace: str) -> Service | None:
    by_host: dict[str, list[Service]] = {}
    for service in snap.services:
        by_host.setdefault(service.hostname, []).append(service)
    for name in candidate_names(host, namespace):
        found = by_host.get(name)
        if found:
            return next((s for s in found if s.namespace == namespace), found[0])
    return None


def mesh_resolver(snapshot: Callable[[], Snapshot]) -> Resolver:
    def resolve(host: str, port: int, namespace: str) -> list[Address]:
        return resolve_host(snapshot(), host, port, namespace)

    return resolve


# -- running ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    ok: bool
    message: str  # one line: what was sent and what came back
    output: bytes = b""  # curl's output (the answer's body), for returnCmdOutput


@dataclass
class Outcome:
    """What one job sent and got, counted by its workers as they go."""

    sent: int = 0
    errors: int = 0  # requests that got no answer
    statuses: Counter[int] = field(default_factory=Counter)
    last_error: str = ""
    output: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: int | None, error: str = "") -> None:
        with self.lock:
            self.sent += 1
            if status is None:
                self.errors += 1
                self.last_error = error
            else:
                self.statuses[status] += 1

    @property
    def answered(self) -> int:
        return self.sent - self.errors

    def summary(self) -> str:
        with self.lock:
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.statuses.items()))
            text = f"{self.sent} requests, {self.answered} answered" + (
                f" ({codes})" if codes else ""
            )
            if self.errors:
                text += f", {self.errors} without answer ({self.last_error})"
            return text

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "sent": self.sent,
                "errors": self.errors,
                "statuses": {str(c): n for c, n in sorted(self.statuses.items())},
            }


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Picker:
    """Each request's endpoint: the host's endpoints in turn, looked up again
    every second, so new instances get traffic and gone ones stop getting it."""

    def __init__(
        self, resolve: Resolver, namespace: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.resolve, self.namespace, self.clock = resolve, namespace, clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[float, list[Address], str]] = {}
        self._turn = 0

    def __repr__(self) -> str:
        return f"Picker({sorted(self._cache)}, namespace={self.namespace!r})"

    def pick(self, url: Url) -> Address:
        with self._lock:
            key = (url.host, url.port)
            at, found, error = self._cache.get(key, (float("-inf"), [], ""))
            if self.clock() - at >= RESOLVE_EVERY_S:
                found, error = self._lookup(url)
                self._cache[key] = (self.clock(), found, error)
            if error:
                raise UnknownHost(error)
            self._turn += 1
            return found[self._turn % len(found)]

    def _lookup(self, url: Url) -> tuple[list[Address], str]:
        try:
            found = self.resolve(url.host, url.port, self.namespace)
        except UnknownHost as e:
            return [], str(e)
        return found, "" if found else f"{url.host}:{url.port} has no ready endpoints"


class Connections:
    """One worker's keep-alive connections, one per endpoint."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self._open: dict[Address, http.client.HTTPConnection] = {}

    def __repr__(self) -> str:
        return f"Connections({sorted(self._open)})"

    def exchange(
        self, where: Address, url: Url, method: str, body: bytes, timeout: float
    ) -> Answer:
        """One request and its answer. A kept connection the server closed
        meanwhile is replaced once, as Go's client does."""
        kept = self._open.pop(where, None)
        if kept is not None:
            try:
                return self._exchange(kept, where, url, method, body, timeout)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                pass
        fresh = http.client.HTTPConnection(*where, timeout=timeout)
        return self._exchange(fresh, where, url, method, body, timeout)

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        where: Address,
        url: Url,
        method: str,
        body: bytes,
        timeout: float,
    ) -> Answer:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.putrequest(method, url.target, skip_host=True, skip_accept_encoding=True)
            for name, value in self._headers(url):
                conn.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            answer = conn.getresponse()
            data = answer.read(MAX_OUTPUT) if self.load.keep_body else b""
            answer.read()
        except BaseException:
            conn.close()
            raise
        if self.load.keepalive and not answer.will_close:
            self._open[where] = conn
        else:
            conn.close()
        return Answer(answer.status, tuple(answer.getheaders()), data)

    def _headers(self, url: Url) -> list[tuple[str, str]]:
        """The command's headers; after a redirect, Host names the new URL."""
        if url == self.load.url:
            return list(self.load.headers)
        return [("Host", url.authority)] + [
            (k, v) for k, v in self.load.headers if k.lower() != "host"
        ]

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


def fetch(load: Load, picker: Picker, conns: Connections, deadline: float) -> Answer:
    """One request, following redirects as the tool would; raises OSError,
    HTTPException or UnknownHost when there is no answer."""
    url, method, body = load.url, load.method, load.body
    for _ in range(load.redirects + 1):
        timeout = max(0.001, min(load.timeout_s, deadline - time.monotonic()))
        answer = conns.exchange(picker.pick(url), url, method, body, timeout)
        location = {k.lower(): v for k, v in answer.headers}.get("location")
        if answer.status not in REDIRECTS or not location or not load.redirects:
            return answer
        url = parse_url(urllib.parse.urljoin(str(url), location))
        if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
            method, body = "GET", b""
    raise http.client.HTTPException(f"stopped after {load.redirects} redirects")


def attempt(load: Load, picker: Picker, conns: Connections, deadline: float) -> Answer | str:
    """One request: its answer, or why there was none."""
    try:
        return fetch(load, picker, conns, deadline)
    except (UnknownHost, CommandError) as e:
        return str(e)
    except TimeoutError:
        return f"{load.url}: timed out after {load.timeout_s:g}s"
    except ConnectionRefusedError:
        return f"{load.url}: connection refused"
    except (OSError, http.client.HTTPException) as e:
        return f"{load.url}: {e or type(e).__name__}"


def run_load(
    load: Load,
    resolve: Resolver,
    namespace: str,
    stop: threading.Event,
    outcome: Outcome | None = None,
) -> RunResult:
    """Run one command to its end (or until `stop`), counting into `outcome`."""
    picker = Picker(resolve, namespace)
    deadline = time.monotonic() + load.time_limit_s
    outcome = outcome if outcome is not None else Outcome()
    if load.tool == "hey":
        return _run_hey(load, picker, stop, deadline, outcome)
    return _run_curl(load, picker, stop, deadline, outcome)


def _run_hey(
    load: Load, picker: Picker, stop: threading.Event, deadline: float, outcome: Outcome
) -> RunResult:
    """hey: -c workers, each sending n/c requests (or until -z is up), at most
    -q a second each. It succeeds when anything answered."""
    each = None if load.duration_s else load.requests // load.concurrency
    workers = [
        threading.Thread(
            target=_hey_worker,
            args=(load, picker, stop, deadline, each, outcome),
            name="loadtest-hey",
            daemon=True,
        )
        for _ in range(load.concurrency)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return RunResult(outcome.answered > 0, f"hey: {outcome.summary()}")


def _hey_worker(
    load: Load,
    picker: Picker,
    stop: threading.Event,
    deadline: float,
    each: int | None,
    outcome: Outcome,
) -> None:
    gap, due, sent = 1.0 / load.worker_rate, time.monotonic(), 0
    conns = Connections(load)
    try:
        while each is None or sent < each:
            now = time.monotonic()
            if stop.is_set() or now >= deadline:
                return
            if due > now:
                stop.wait(min(due, deadline) - now)
                continue
            due = max(due + gap, now)  # a slow answer drops turns, as Go's ticker does
            sent += 1
            outcome.record(*_counted(attempt(load, picker, conns, deadline)))
    finally:
        conns.close()


def _run_curl(
    load: Load, picker: Picker, stop: threading.Event, deadline: float, outcome: Outcome
) -> RunResult:
    """curl: one request, retried on transient failures with --retry; with -f
    an answer of 400 or more fails it."""
    conns = Connections(load)
    answer: Answer | str = ""
    try:
        for tried in range(load.retries + 1):
            answer = attempt(load, picker, conns, deadline)
            outcome.record(*_counted(answer))
            if not _transient(load, answer) or tried == load.retries:
                break
            delay = load.retry_delay_s or min(2.0**tried, 600.0)
            if stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                break
    finally:
        conns.close()
    if isinstance(answer, str):
        return RunResult(False, f"curl: {answer}")
    failed = load.fail_on_error and answer.status >= 400
    why = f"curl: {load.url} answered {answer.status}"
    why += " (the requested URL returned error)" if failed else ""
    return RunResult(not failed, why, _curl_output(load, answer))


def _counted(answer: Answer | str) -> tuple[int | None, str]:
    return (answer.status, "") if isinstance(answer, Answer) else (None, answer)


def _transient(load: Load, answer: Answer | str) -> bool:
    if isinstance(answer, Answer):
        return answer.status in CURL_TRANSIENT
    return "timed out" in answer or (load.retry_refused and "refused" in answer)


def _curl_output(load: Load, answer: Answer) -> bytes:
    head = b""
    if load.show_headers:
        lines = [f"HTTP/1.1 {answer.status}", *(f"{k}: {v}" for k, v in answer.headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    code = str(answer.status)
    tail = load.write_out.replace("%{http_code}", code).replace("%{response_code}", code)
    return (head + answer.body + tail.replace("\\n", "\n").encode())[:MAX_OUTPUT]


# -- jobs ---------------------------------------------------------------------------------


@dataclass
class Job:
    canary: str  # "name.namespace", as flagger-loadtester keys its tasks
    command: str
    load: Load
    started: float  # wall clock
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    blocking: bool = False
    outcome: Outcome = field(default_factory=Outcome)

    def to_json(self) -> dict[str, Any]:
        return {
            "canary": self.canary,
            "command": self.command,
            "started": rfc3339(self.started),
            "blocking": self.blocking,
            **self.outcome.to_json(),
        }


class LoadTester:
    """Commands run in the background (one copy per canary and command at a
    time) or to completion, within MAX_JOBS and MAX_WORKERS."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._serial = 0

    def __repr__(self) -> str:
        return f"LoadTester({len(self._jobs)} jobs)"

    def start(self, command: str, *, canary: str = "", namespace: str = "default") -> bool:
        """Start `command` unless it runs already for this canary; False when
        it did. CommandError, UnknownHost or Busy when it cannot start."""
        load = parse_command(command)
        self.resolve(load.url.host, load.url.port, namespace)  # an unknown host fails now
        job = Job(canary, command, load, time.time())
        if not self._admit((canary, command), job):
            return False
        job.thread = threading.Thread(
            target=self._background, args=(job, namespace), name="loadtest", daemon=True
        )
        job.thread.start()
        return True

    def run(self, command: str, *, canary: str = "", namespace: str = "default") -> RunResult:
        """Run `command` to its end here; a host that is no mesh service is a
        failed run. CommandError or Busy when it cannot run at all."""
        load = parse_command(command)
        job = Job(canary, command, load, time.time(), blocking=True)
        with self._lock:
            self._serial += 1
            key = (canary, f"{command}#{self._serial}")
        self._admit(key, job)
        try:
            return run_load(load, self.resolve, namespace, job.stop, job.outcome)
        except UnknownHost as e:
            return RunResult(False, f"{load.tool}: {e}")
        finally:
            self._forget(key)

    def jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every job and wait for the background ones (up to `timeout`)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))

    def _admit(self, key: tuple[str, str], job: Job) -> bool:
        with self._lock:
            if self._closed:
                raise Busy("the load tester is shutting down")
            if key in self._jobs:
                return False
            if len(self._jobs) >= MAX_JOBS:
                raise Busy(f"{MAX_JOBS} load tests run already; wait for one to end")
            workers = sum(j.load.concurrency for j in self._jobs.values())
            if workers + job.load.concurrency > MAX_WORKERS:
                raise Busy(f"{workers} load test workers run already (limit {MAX_WORKERS})")
            self._jobs[key] = job
            return True

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def _background(self, job: Job, namespace: str) -> None:
        log.info("load test for %s started: %s", job.canary or "-", job.command)
        try:
            result = run_load(job.load, self.resolve, namespace, job.stop, job.outcome)
            log.info("load test for %s ended: %s", job.canary or "-", result.message)
        except Exception:  # a bug here must not take the thread's caller down
            log.exception("load test for %s failed: %s", job.canary or "-", job.command)
        finally:
            self._forget((job.canary, job.command))


# -- gates --------------------------------------------------------------------------------


class Gates:
    """flagger-loadtester's gate storage: per canary (name and namespace), a
    confirmation gate and a rollback gate, each closed until opened."""

    KINDS = ("gate", "rollback")

    def __init__(self) -> None:
        self._open: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Gates({sorted(self._open)})"

    def open(self, kind: str, name: str, namespace: str) -> None:
        with self._lock:
            self._open.add((kind, name, namespace))

    def close(self, kind: str, name: str, namespace: str) -> None:
        with self._lock:
            self._open.discard((kind, name, namespace))

    def is_open(self, kind: str, name: str, namespace: str) -> bool:
        with self._lock:
            return (kind, name, namespace) in self._open
