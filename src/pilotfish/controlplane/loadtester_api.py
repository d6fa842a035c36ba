"""The built-in load tester and gates on flagger-loadtester's HTTP API, so
Flagger users' webhooks carry over with only the URL changed
(http://127.0.0.1:15080/loadtester/). As flagger-loadtester's, these paths
take no token (webhooks carry none; api.py lets them through), answer in
plain text, and read the canary from Flagger's webhook payload.

    POST /loadtester/                metadata.cmd, a hey or curl command:
                                       type cmd (the default): started in the
                                       background, 202; not again while the same
                                       command runs for the same canary
                                       type bash: run to its end, 200 if it
                                       succeeded (with its output when
                                       metadata.returnCmdOutput is true), else 500
    GET  /loadtester/                the jobs running, as JSON (ours, not Flagger's)
    *    /loadtester/healthz         200
    *    /loadtester/gate/approve    200               /gate/halt      403
    POST /loadtester/gate/check      200 when the canary's gate is open, else 403
    POST /loadtester/gate/open       202, opens it     /gate/close     202, closes it
    POST /loadtester/rollback/check  200 when a rollback is asked for, else 403
    POST /loadtester/rollback/open   202               /rollback/close 202

Gates start closed, are kept in memory, and are per canary (name and
namespace of the payload).
"""

from __future__ import annotations

from collections.abc import Callable

from pilotfish.api.errors import BadRequest
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.controlplane.bodies import parse
from pilotfish.model.snapshot import Snapshot
from pilotfish.objects import Obj
from pilotfish.rollout.loadcommands import CommandError
from pilotfish.rollout.loadtester import (
    Busy,
    Gates,
    LoadTester,
    UnknownHost,
    mesh_resolver,
)

PREFIX = "/loadtester"
BACKGROUND, BLOCKING = "cmd", "bash"  # flagger-loadtester's task types we run
TEXT = "text/plain; charset=utf-8"


class LoadTesterApi:
    """An `Api` extension: answers paths under /loadtester, None for others."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.tester = LoadTester(mesh_resolver(snapshot))
        self.gates = Gates()

    def __repr__(self) -> str:
        return f"LoadTesterApi({self.tester!r}, {self.gates!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        rest = path[len(PREFIX) :].strip("/")
        if rest == "healthz":
            return _text(200, "OK")
        if rest == "gate/approve":
            return _text(200, "OK")
        if rest == "gate/halt":
            return _text(403, "Forbidden")
        if not rest and request.method in ("GET", "HEAD") and not request.body.strip():
            jobs = [job.to_json() for job in self.tester.jobs()]
            return Response(200, encode({"jobs": jobs}))
        body = _payload(request)
        if isinstance(body, Response):
            return body
        if not rest:
            return self._task(body)
        kind, _, action = rest.partition("/")
        if kind in Gates.KINDS and action in ("check", "open", "close"):
            return self._gate(kind, action, body)
        return _text(404, f"{path}: no such load tester path")

    def close(self) -> None:
        """Stop all load this API started."""
        self.tester.close()

    def _task(self, body: Obj) -> Response:
        metadata = body.get("metadata")
        if not isinstance(metadata, dict) or not metadata:
            return _text(400, "metadata not found in payload")
        kind = str(metadata.get("type") or BACKGROUND)
        if kind not in (BACKGROUND, BLOCKING):
            return _text(
                400,
                f"unknown task type {kind}: the built-in load tester runs hey and curl "
                f'commands, as type "{BACKGROUND}" (in the background) or "{BLOCKING}" '
                "(to their end)",
            )
        command = metadata.get("cmd")
        if not isinstance(command, str) or not command.strip():
            return _text(400, "cmd not found in metadata")
        name, namespace = _canary(body)
        if kind == BLOCKING:
            return self._run(command, name, namespace, _true(metadata.get("returnCmdOutput")))
        try:
            started = self.tester.start(command, canary=f"{name}.{namespace}", namespace=namespace)
        except (CommandError, UnknownHost) as e:
            return _text(400, str(e))
        except Busy as e:
            return _text(429, str(e))
        return _text(202, f"{'started' if started else 'already running'}: {command}")

    def _run(self, command: str, name: str, namespace: str, with_output: bool) -> Response:
        try:
            result = self.tester.run(command, canary=f"{name}.{namespace}", namespace=namespace)
        except CommandError as e:
            return _text(400, str(e))
        except Busy as e:
            return _text(429, str(e))
        if not result.ok:
            return _text(500, f"command {command} failed: {result.message}")
        return Response(200, result.output if with_output else b"", TEXT)

    def _gate(self, kind: str, action: str, body: Obj) -> Response:
        name, namespace = _canary(body)
        if not name:
            return _text(400, "the payload has no canary name")
        if action == "open":
            self.gates.open(kind, name, namespace)
            return _text(202, f"{kind} opened for {name}.{namespace}")
        if action == "close":
            self.gates.close(kind, name, namespace)
            return _text(202, f"{kind} closed for {name}.{namespace}")
        if self.gates.is_open(kind, name, namespace):
            return _text(200, "Approved")
        return _text(403, "Forbidden")


def _payload(request: Request) -> Obj | Response:
    """The webhook payload, or the 400 flagger-loadtester answers without one."""
    try:
        body = parse(request.body or b"null", as_yaml=False)
    except BadRequest as e:  # malformed, or over the parse limits every body has
        return _text(400, f"decoding the request body failed: {e.message}")
    if not isinstance(body, dict):
        return _text(400, "decoding the request body failed: expected a JSON object")
    return body


def _canary(body: Obj) -> tuple[str, str]:
    return str(body.get("name") or ""), str(body.get("namespace") or "default")


def _true(value: object) -> bool:
    return str(value).strip().lower() in ("1", "t", "true")


def _text(code: int, text: str) -> Response:
    return Response(code, text.encode(), TEXT)
