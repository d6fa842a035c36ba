"""Flagger's webhook client against a real local HTTP server: the payload on
the wire, what each answer means, timeouts, refused connections, retries."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pilotfish.rollout import webhooks
from pilotfish.rollout.types import CONFIRM_PROMOTION, EVENT, PRE_ROLLOUT, ROLLOUT

Obj = dict[str, Any]

CANARY: Obj = {
    "apiVersion": "flagger.app/v1beta1",
    "kind": "Canary",
    "metadata": {"name": "podinfo", "namespace": "test"},
    "spec": {
        "analysis": {
            "webhooks": [
                {"name": "load", "url": "http://x/", "metadata": {"cmd": "hey http://a:80/"}},
                {"name": "gate", "type": "confirm-promotion", "url": "http://x/gate/check"},
                {"name": "smoke", "type": "pre-rollout", "url": "http://x/"},
                {"name": "typed", "type": "rollout", "url": "http://x/"},
            ]
        }
    },
    "status": {"lastAppliedSpec": "abc", "trackedConfigs": {"configmap/cfg": "123"}},
}


class Hooks(BaseHTTPRequestHandler):
    """Answers by path: /status/CODE, /slow, /flaky (500 once, then 200)."""

    received: list[tuple[str, dict[str, str], bytes]]
    flaky_calls: int

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.path, dict(self.headers), body))
        if self.path == "/slow":
            time.sleep(1.5)
            self._answer(200, b"late")
        elif self.path == "/flaky":
            type(self).flaky_calls += 1
            self._answer(500 if type(self).flaky_calls == 1 else 200, b"try again")
        else:
            code = int(self.path.rsplit("/", 1)[-1])
            self._answer(code, f"answer {code}\nsecond line".encode())

    def _answer(self, code: int, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the caller gave up waiting (the timeout test)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Hooks]]]:
    handler = type("Handler", (Hooks,), {"received": [], "flaky_calls": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- which hooks, and the payload -------------------------------------------------------


def test_hooks_of_a_type_in_order_and_untyped_hooks_are_rollout_hooks() -> None:
    assert [h["name"] for h in webhooks.hooks_of(CANARY, ROLLOUT)] == ["load", "typed"]
    assert [h["name"] for h in webhooks.hooks_of(CANARY, CONFIRM_PROMOTION)] == ["gate"]
    assert [h["name"] for h in webhooks.hooks_of(CANARY, PRE_ROLLOUT)] == ["smoke"]
    assert webhooks.hooks_of({"spec": {}}, ROLLOUT) == []


def test_the_payload_is_flaggers_canary_webhook_payload() -> None:
    hook = CANARY["spec"]["analysis"]["webhooks"][0]
    body = webhooks.payload(CANARY, hook, phase="Progressing", checksum="c1")
    assert body == {
        "name": "podinfo",
        "namespace": "test",
        "phase": "Progressing",
        "checksum": "c1",
        "metadata": {"cmd": "hey http://a:80/"},
    }
    bare = webhooks.payload(CANARY, {"name": "g", "url": "u"}, phase="Waiting", checksum="")
    assert "metadata" not in bare  # omitempty, as Flagger's JSON
    assert set(bare) == {"name", "namespace", "phase", "checksum"}


def test_an_event_hook_gets_the_event_and_keeps_its_own_metadata_under_free_keys() -> None:
    hook = {"name": "e", "type": EVENT, "url": "u", "metadata": {"env": "prod", "eventType": "x"}}
    before = int(time.time() * 1000)
    body = webhooks.payload(
        CANARY,
        hook,
        phase="Progressing",
        checksum="c",
        extra={"eventMessage": "Advance podinfo.test canary weight 10", "eventType": "Normal"},
    )
    meta = body["metadata"]
    assert meta["eventMessage"] == "Advance podinfo.test canary weight 10"
    assert meta["eventType"] == "Normal"  # the event's, not the hook's
    assert meta["env"] == "prod"
    assert before <= int(meta["timestamp"]) <= int(time.time() * 1000)


def test_the_checksum_follows_tracked_configs_and_the_last_applied_spec() -> None:
    first = webhooks.checksum(CANARY)
    assert first == webhooks.checksum(json.loads(json.dumps(CANARY)))
    assert set(first) <= set("bcdfghjklmnpqrstvwxz2456789")
    changed = {**CANARY, "status": {**CANARY["status"], "lastAppliedSpec": "def"}}
    assert webhooks.checksum(changed) != first


# -- calling ----------------------------------------------------------------------------


def test_a_call_posts_the_json_payload(server: tuple[str, type[Hooks]]) -> None:
    url, handler = server
    hook = {"name": "load", "url": f"{url}/status/200", "metadata": {"cmd": "hey"}}
    body = webhooks.payload(CANARY, hook, phase="Progressing", checksum="c")
    result = webhooks.call(hook, body)
    assert result.ok and result.name == "load" and result.type == ROLLOUT
    path, headers, raw = handler.received[-1]
    assert path == "/status/200"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw) == body


@pytest.mark.parametrize(("code", "ok"), [(200, True), (201, True), (202, True), (204, False)])
def test_200_to_202_let_the_release_go_on_as_in_flagger(
    server: tuple[str, type[Hooks]], code: int, ok: bool
) -> None:
    url, _ = server
    result = webhooks.call({"name": "h", "url": f"{url}/status/{code}"}, {})
    assert result.ok is ok
    if not ok:
        assert f"answered {code}" in result.message


@pytest.mark.parametrize("code", [400, 403, 404, 500, 503])
def test_an_error_status_fails_with_the_hook_the_code_and_the_body_on_one_line(
    server: tuple[str, type[Hooks]], code: int
) -> None:
    url, _ = server
    hook = {"name": "gate", "type": CONFIRM_PROMOTION, "url": f"{url}/status/{code}"}
    result = webhooks.call(hook, {})
    assert not result.ok and result.type == CONFIRM_PROMOTION
    assert result.message.startswith('webhook "gate" (')
    assert f"answered {code}: answer {code} second line" in result.message
    assert "\n" not in result.message


def test_a_hook_slower_than_its_timeout_fails(server: tuple[str, type[Hooks]]) -> None:
    url, _ = server
    started = time.monotonic()
    result = webhooks.call({"name": "slow", "url": f"{url}/slow", "timeout": "300ms"}, {})
    assert time.monotonic() - started < 1.2
    assert not result.ok
    assert 'webhook "slow"' in result.message and "timed out after 0.3s" in result.message


def test_a_refused_connection_fails() -> None:
    port = closed_port()
    result = webhooks.call({"name": "gone", "url": f"http://127.0.0.1:{port}/"}, {})
    assert not result.ok
    assert (
        result.message
        == f'webhook "gone" (http://127.0.0.1:{port}/): no answer: connection refused'
    )


def test_an_answer_that_is_not_http_fails() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def garble() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SMTP ready\r\n\r\n")

        threading.Thread(target=garble, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        result = webhooks.call({"name": "odd", "url": url}, {})
    assert not result.ok and "no valid answer" in result.message


@pytest.mark.parametrize(
    ("hook", "why"),
    [
        ({"name": "b", "url": "not a url"}, "is not an http(s) URL"),
        ({"name": "b", "url": ""}, "is not an http(s) URL"),
        ({"name": "b", "url": "ftp://x/"}, "is not an http(s) URL"),
        ({"name": "b", "url": "http://127.0.0.1:1/", "timeout": "soon"}, "invalid duration"),
    ],
)
def test_a_hook_that_cannot_be_called_fails_with_why(hook: Obj, why: str) -> None:
    result = webhooks.call(hook, {})
    assert not result.ok and 'webhook "b"' in result.message and why in result.message


def test_retries_retry_a_5xx(
    server: tuple[str, type[Hooks]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    monkeypatch.setattr(webhooks, "_backoff", lambda attempt, after: 0.0)
    assert webhooks.call({"name": "f", "url": f"{url}/flaky", "retries": 2}, {}).ok
    assert handler.flaky_calls == 2
    failed = webhooks.call({"name": "f", "url": f"{url}/status/503", "retries": 2}, {})
    assert not failed.ok and failed.message.endswith("after 3 attempts")
    calls = len(handler.received)
    assert not webhooks.call({"name": "f", "url": f"{url}/status/400", "retries": 2}, {}).ok
    assert len(handler.received) == calls + 1  # a 4xx is an answer: not retried


def test_without_retries_a_5xx_fails_at_once(server: tuple[str, type[Hooks]]) -> None:
    url, handler = server
    assert not webhooks.call({"name": "f", "url": f"{url}/flaky"}, {}).ok
    assert handler.flaky_calls == 1
