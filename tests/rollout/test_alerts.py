"""Alerts to AlertProviders, posted to a real HTTP server: Flagger's message
formats, severity filtering, addresses from Secrets, failures reported."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pilotfish.rollout import webhooks
from pilotfish.rollout.alerts import send, wants
from pilotfish.rollout.canary import Canary, read_canary
from pilotfish.rollout.phases import Alert

Obj = dict[str, Any]


class Receiver:
    """Records what is posted; answers 500 on paths under /broken."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Obj]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts.append((self.path, dict(self.headers), body))
                self.send_response(500 if self.path.startswith("/broken") else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[Obj]:
        return [body for p, _, body in self.posts if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def canary(*alerts: Obj) -> Canary:
    return read_canary(
        {
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {
                "targetRef": {"kind": "Deployment", "name": "reviews"},
                "service": {"port": 9080},
                "analysis": {"threshold": 5, "stepWeight": 10, "maxWeight": 50, "alerts": alerts},
            },
        }
    )


def provider(kind: str, **spec: Any) -> Obj:
    return {"kind": "AlertProvider", "spec": {"type": kind, **spec}}


def lookup_in(objects: dict[tuple[str, str, str], Obj]) -> Any:
    return lambda kind, namespace, name: objects.get((kind, namespace, name))


def test_each_provider_gets_its_own_format(receiver: Receiver) -> None:
    kinds = ("slack", "msteams", "discord", "rocket", "gchat")
    objects = {
        ("AlertProvider", "shop", k): provider(k, address=f"{receiver.url}/{k}", channel="ops")
        for k in kinds
    }
    c = canary(*({"name": k, "providerRef": {"name": k}} for k in kinds))
    alert = Alert("New revision detected, progressing canary analysis.", metadata=True)
    assert send(c, alert, lookup_in(objects)) == []

    (slack,) = receiver.bodies("/slack")
    assert (slack["channel"], slack["username"], slack["icon_emoji"]) == (
        "ops",
        "flagger",
        ":rocket:",
    )
    attachment = slack["attachments"][0]
    assert (attachment["color"], attachment["author_name"]) == ("good", "reviews.shop")
    assert attachment["text"] == alert.message
    assert {f["title"]: f["value"] for f in attachment["fields"]} == {
        "Target": "Deployment/reviews.shop",
        "Failed checks threshold": "5",
        "Progress deadline": "600s",
        "Traffic routing": "Weight step: 10 max: 50",
    }
    assert receiver.bodies("/discord/slack")[0]["attachments"] == slack["attachments"]
    assert receiver.bodies("/rocket")[0]["attachments"][0]["color"] == "#0076D7"
    (teams,) = receiver.bodies("/msteams")
    assert (teams["@type"], teams["themeColor"], teams["summary"]) == (
        "MessageCard",
        "0076D7",
        "reviews.shop",
    )
    assert teams["sections"][0]["activityTitle"] == alert.message
    assert len(teams["sections"][0]["facts"]) == 4
    (chat,) = receiver.bodies("/gchat")
    card = chat["cards"][0]
    assert card["header"]["subtitle"] == "reviews.shop"
    assert alert.message in card["sections"][0]["widgets"][0]["textParagraph"]["text"]
    assert len(card["sections"]) == 5


def test_severity_decides_who_hears(receiver: Receiver) -> None:
    objects = {("AlertProvider", "shop", "p"): provider("slack", address=f"{receiver.url}/p")}
    c = canary(
        {"name": "all", "providerRef": {"name": "p"}},
        {"name": "warnings", "severity": "warn", "providerRef": {"name": "p"}},
        {"name": "errors", "severity": "error", "providerRef": {"name": "p"}},
    )
    for severity in ("info", "warn", "error"):
        assert send(c, Alert(severity, severity), lookup_in(objects)) == []
    heard = [
        (b["attachments"][0]["text"], b["attachments"][0]["color"]) for b in receiver.bodies("/p")
    ]
    assert heard == [
        ("info", "good"),
        ("warn", "good"),
        ("warn", "good"),
        ("error", "danger"),
        ("error", "danger"),
        ("error", "danger"),
    ]
    assert [wants(a, s) for a in ("", "info", "warn", "error") for s in ("info", "error")] == [
        True, True, True, True, False, True, False, True
    ]  # fmt: skip


def test_address_and_token_from_a_secret_in_the_providers_namespace(receiver: Receiver) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    objects = {
        ("AlertProvider", "ops", "team"): provider("msteams", secretRef={"name": "hook"}),
        ("Secret", "ops", "hook"): {
            "data": {"address": b64(f"{receiver.url}/secret"), "token": b64("s3cret")}
        },
    }
    c = canary({"name": "team", "providerRef": {"name": "team", "namespace": "ops"}})
    assert send(c, Alert("Canary failed", "error"), lookup_in(objects)) == []
    ((_, headers, body),) = receiver.posts
    assert headers["Authorization"] == "Bearer s3cret"
    assert body["themeColor"] == "FF0000"


def test_what_goes_wrong_is_reported_per_provider(receiver: Receiver) -> None:
    objects = {
        ("AlertProvider", "shop", "broken"): provider("slack", address=f"{receiver.url}/broken"),
        ("AlertProvider", "shop", "odd"): provider("pagerduty", address=receiver.url),
        ("AlertProvider", "shop", "bare"): provider("slack", secretRef={"name": "gone"}),
        ("AlertProvider", "shop", "fine"): provider("slack", address=f"{receiver.url}/fine"),
    }
    names = ("broken", "odd", "missing", "bare", "fine")
    c = canary(*({"name": n, "providerRef": {"name": n}} for n in names))
    errors = send(c, Alert("hello"), lookup_in(objects))
    assert errors == [
        f"alert provider broken.shop: {receiver.url}/broken answered 500: no",
        "alert provider odd.shop: provider pagerduty not supported",
        "alert provider missing.shop: not found",
        "alert provider bare.shop: secretRef: Secret gone not found",
    ]
    assert len(receiver.bodies("/fine")) == 1, "the others still get theirs"


def test_a_webhook_carries_its_mute_alert() -> None:
    hook = {
        "name": "gate",
        "type": "confirm-rollout",
        "url": "http://127.0.0.1:9",
        "muteAlert": True,
    }
    result = webhooks.call(hook, {})
    assert not result.ok and result.mute_alert


def test_the_control_planes_rollout_service_finds_providers_in_the_store(
    receiver: Receiver, tmp_path: Any
) -> None:
    from pilotfish.api.validation import validate_or_raise, with_defaults
    from pilotfish.rollout.service import RolloutService
    from pilotfish.store.resources import ResourceStore
    from pilotfish.store.sqlite import SqliteBackend

    store = ResourceStore(
        SqliteBackend(tmp_path / "store.db"), validate=validate_or_raise, default=with_defaults
    )
    store.apply(
        {
            "apiVersion": "flagger.app/v1beta1",
            "kind": "AlertProvider",
            "metadata": {"name": "on-call", "namespace": "shop"},
            "spec": {"type": "slack", "channel": "on-call", "address": f"{receiver.url}/hook"},
        },
        manager="user",
    )
    service = RolloutService(store, lambda: [])
    service.alert(canary({"name": "chat", "providerRef": {"name": "on-call"}}), Alert("hi"))
    store.close()
    (body,) = receiver.bodies("/hook")
    assert (body["channel"], body["attachments"][0]["text"]) == ("on-call", "hi")


def test_a_providers_proxy_carries_its_posts(receiver: Receiver) -> None:
    address = "http://alerts.example.invalid/hook"
    objects = {
        ("AlertProvider", "shop", "p"): provider("slack", address=address, proxy=receiver.url)
    }
    assert (
        send(canary({"name": "p", "providerRef": {"name": "p"}}), Alert("hi"), lookup_in(objects))
        == []
    )
    assert [path for path, _, _ in receiver.posts] == [address]  # absolute form: a proxy's request


def test_without_one_the_environments_proxy_is_used_except_for_loopback(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Flagger's Go client: HTTP(S)_PROXY from the environment, never for loopback."""
    monkeypatch.setenv("HTTP_PROXY", receiver.url)
    monkeypatch.setenv("http_proxy", receiver.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    remote = "http://alerts.example.invalid/hook"
    objects = {
        ("AlertProvider", "shop", "remote"): provider("slack", address=remote),
        ("AlertProvider", "shop", "local"): provider("slack", address=f"{receiver.url}/local"),
    }
    c = canary(*({"name": n, "providerRef": {"name": n}} for n in ("remote", "local")))
    assert send(c, Alert("hi"), lookup_in(objects)) == []
    assert sorted(path for path, _, _ in receiver.posts) == ["/local", remote]
