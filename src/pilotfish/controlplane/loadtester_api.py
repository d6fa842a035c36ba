"""The built-in load tester and gates, on flagger-loadtester's HTTP API, so
Flagger users' webhooks carry over with only the URL changed
(http://127.0.0.1:15080/loadtester/). Like Flagger's, these paths need no
token: webhooks carry none.

    POST /loadtester/                 run metadata.cmd (hey or curl): in the background,
                                      one copy at a time; with type bash or blocking:
                                      "true", to the end (200 only if it succeeded)
    GET  /loadtester/                 the commands running
    POST /loadtester/gate/approve     200            /gate/halt     403
    POST /loadtester/gate/check       200 when open, 403 when closed (the default)
    POST /loadtester/gate/open|close  per canary (name and namespace of the payload)
    POST /loadtester/rollback/check   200 when open (roll back), 403 when closed
    POST /loadtester/rollback/open|close
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from pilotfish.api.errors import BadRequest, MethodNotAllowed, NotFound
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.model.snapshot import Snapshot
from pilotfish.rollout.loadtester import CommandError, LoadTester, Resolver

PREFIX = "/loadtester"
BLOCKING_TYPES = ("bash",)
SUPPORTED_TYPES = ("", "cmd", "bash")


class LoadTesterApi:
    """An `Api` extension: answers paths under /loadtester, None for others."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.tester = LoadTester(snapshot_resolver(snapshot))
        self._gates: dict[str, set[tuple[str, str]]] = {"gate": set(), "rollback": set()}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LoadTesterApi({self.tester!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        rest = path[len(PREFIX) :].strip("/")
        if request.method == "GET" and not rest:
            return _answer(200, {"running": self.tester.running()})
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} is not supported on {request.path}")
        payload = _payload(request)
        if not rest:
            return self._command(payload)
        return self._gate(rest, payload)

    def close(self) -> None:
        self.tester.close()

    def _command(self, payload: dict[str, Any]) -> Response:
        metadata = payload.get("metadata") or {}
        command, kind = str(metadata.get("cmd") or ""), str(metadata.get("type") or "")
        if not command:
            raise BadRequest("metadata.cmd is required: the command to run")
        if kind not in SUPPORTED_TYPES:
            raise BadRequest(f'metadata.type "{kind}" is not supported (supported: cmd, bash)')
        try:
            if kind in BLOCKING_TYPES or str(metadata.get("blocking")).lower() == "true":
                return self._run(command)
            started = self.tester.start(command)
        except (CommandError, LookupError) as e:
            raise BadRequest(str(e)) from e
        message = "started" if started else "already running"
        return _answer(200, {"message": f"{message}: {command}"})

    def _run(self, command: str) -> Response:
        outcome = self.tester.run(command)
        if outcome.errors or not outcome.sent:
            why = outcome.last_error or "nothing was sent"
            return _answer(400, {"message": f"{command} failed: {why}"})
        return _answer(200, {"message": f"{command}: {outcome.sent} requests succeeded"})

    def _gate(self, rest: str, payload: dict[str, Any]) -> Response:
        if rest == "gate/approve":
            return _answer(200, {"message": "approved"})
        if rest == "gate/halt":
            return _answer(403, {"message": "halted"})
        group, _, action = rest.partition("/")
        if group not in self._gates or action not in ("check", "open", "close"):
            raise NotFound(f"{PREFIX}/{rest}: no such load tester path")
        who = (str(payload.get("name") or ""), str(payload.get("namespace") or "default"))
        if not who[0]:
            raise BadRequest("the payload needs the canary's name (and namespace)")
        with self._lock:
            opened = self._gates[group]
            if action == "open":
                opened.add(who)
            elif action == "close":
                opened.discard(who)
            is_open = who in opened
        if action != "check":
            return _answer(202, {"message": f"{group} {'opened' if is_open else 'closed'}"})
        return _answer(200 if is_open else 403, {"message": "open" if is_open else "closed"})


def snapshot_resolver(snapshot: Callable[[], Snapshot]) -> Resolver:
    """A command's host as a mesh service: NAME, NAME.NS, NAME.NS.svc or the
    full name; its instances' sidecar addresses for that port."""

    def resolve(host: str, port: int) -> list[tuple[str, int]]:
        snap = snapshot()
        wanted = _full_name(host)
        service = next((s for s in snap.services if s.hostname == wanted), None)
        if service is None:
            raise LookupError(f'"{host}" is not a service of the mesh')
        if service.port(port) is None:
            raise LookupError(f'service "{host}" has no port {port}')
        return [(e.address, e.port) for e in snap.endpoints(service, port)]

    return resolve


def _full_name(host: str) -> str:
    parts = host.rstrip(".").split(".")
    if len(parts) == 1:
        parts.append("default")
    if len(parts) == 2:
        parts.append("svc")
    if len(parts) == 3 and parts[2] == "svc":
        parts += ["cluster", "local"]
    return ".".join(parts)


def _payload(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _answer(code: int, body: dict[str, Any]) -> Response:
    return Response(code, encode(body))
