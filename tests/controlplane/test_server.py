"""The API over real sockets, driven by the Client the CLI uses."""

from __future__ import annotations

import json
import queue
import re
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilotfish.api.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)
from pilotfish.api.kinds import registry
from pilotfish.api.validation import validate_or_raise
from pilotfish.client import Client, Unreachable
from pilotfish.controlplane.api import Api
from pilotfish.controlplane.http import ApiServer
from pilotfish.controlplane.main import ControlPlane
from pilotfish.controlplane.openapi import schema_name
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

from .cp_testkit import TOKEN, VS_PATH, service, virtual_service

VS = registry().resolve("virtualservice")
SVC = registry().resolve("service")


def raw(
    server: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Watcher:
    """A client watch on a thread, its events on a queue."""

    def __init__(self, events: Iterator[tuple[str, dict]]) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self._iterator = events
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self._iterator:
                self.events.put(event)
            self.events.put("END")
        except Exception as e:
            self.events.put(e)

    def take(self, count: int) -> list[Any]:
        return [self.events.get(timeout=5) for _ in range(count)]


def test_apply_get_list_delete_round_trip(client: Client) -> None:
    obj, _ = client.apply(virtual_service())
    assert obj["metadata"]["namespace"] == "default" and obj["metadata"]["generation"] == 1
    assert client.get(VS, "reviews", None)["spec"]["hosts"] == ["reviews"]
    listed = client.list(VS, "default")
    assert listed["kind"] == "VirtualServiceList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["reviews"]
    assert client.list(VS, "other")["items"] == []
    assert len(client.list(VS, None)["items"]) == 1

    deleted = client.delete(VS, "reviews", "default")
    assert deleted["metadata"]["name"] == "reviews"
    with pytest.raises(
        NotFound, match=re.escape('virtualservices.networking.istio.io "reviews" not found')
    ):
        client.get(VS, "reviews", "default")


def test_create_update_and_status(client: Client) -> None:
    created = client.create(service())
    with pytest.raises(AlreadyExists):
        client.create(service())
    created["spec"]["ports"][0]["port"] = 80
    updated = client.update(created)
    assert updated["spec"]["ports"][0]["port"] == 80
    with pytest.raises(Conflict, match="has been modified"):
        client.update(created)
    with_status = client.update_status({**updated, "status": {"loadBalancer": {}}})
    assert with_status["status"] == {"loadBalancer": {}}


def test_two_managers_conflict_on_a_field_and_force_resolves_it(client: Client) -> None:
    client.apply(virtual_service(), manager="alice")
    theirs = virtual_service(hosts=["reviews", "reviews.example.com"])
    with pytest.raises(Conflict) as raised:
        client.apply(theirs, manager="bob")
    assert 'conflict with "alice"' in raised.value.message and ".spec.hosts" in raised.value.message
    forced, _ = client.apply(theirs, manager="bob", force=True)
    assert forced["spec"]["hosts"] == ["reviews", "reviews.example.com"]


def test_dry_run_stores_nothing_and_warnings_arrive(client: Client) -> None:
    obj, warnings = client.apply(virtual_service(), dry_run=True)
    assert obj["spec"]["hosts"] == ["reviews"]
    assert any(
        '[IST0101] (VirtualService default/reviews) Referenced host not found: "reviews"' in w
        for w in warnings
    )
    assert client.list(VS, "default")["items"] == []
    client.apply(service())
    client.delete(SVC, "reviews", "default", dry_run=True)
    assert client.get(SVC, "reviews", "default")["metadata"]["name"] == "reviews"


def test_invalid_object_is_422_with_its_field_and_not_stored(client: Client) -> None:
    empty = {**virtual_service("empty"), "spec": {}}
    with pytest.raises(Invalid) as raised:
        client.apply(empty)
    assert raised.value.code == 422
    assert "VirtualService default/empty: spec" in raised.value.message
    assert client.list(VS, None)["items"] == []


def test_path_body_mismatch_unknown_resource_and_token(plane: ControlPlane) -> None:
    server = plane.server.url
    code, status = raw(server, "PUT", f"{VS_PATH}/other", virtual_service(), token_of(plane))
    assert code == 400 and status["reason"] == "BadRequest"
    assert "does not match the name on the URL (other)" in status["message"]
    code, status = raw(server, "GET", "/apis/networking.istio.io/v1/namespaces/default/widgets")
    assert code == 404 and status["kind"] == "Status" and status["code"] == 404

    anonymous = Client(server, None)
    with pytest.raises(Forbidden, match='User "system:anonymous" cannot patch'):
        anonymous.apply(virtual_service())
    with pytest.raises(Unauthorized):
        Client(server, "not-the-token").apply(virtual_service())
    assert anonymous.list(VS, None)["items"] == []  # reads from loopback need no token
    Client(server, token_of(plane)).apply(virtual_service())
    with pytest.raises(BadRequest):
        anonymous.list(VS, None, label_selector="a in (")


def token_of(plane: ControlPlane) -> str:
    return (plane.data_dir / "token").read_text().strip()


def test_watch_delivers_changes_and_resumes(client: Client) -> None:
    client.apply(virtual_service("a"))
    watcher = Watcher(client.watch(VS, "default"))
    [(kind, first)] = watcher.take(1)
    assert kind == "ADDED" and first["metadata"]["name"] == "a"
    client.apply(virtual_service("a", hosts=["a2"]))
    client.apply(service("not-watched"))
    client.delete(VS, "a", "default")
    assert [t for t, _ in watcher.take(2)] == ["MODIFIED", "DELETED"]

    since = first["metadata"]["resourceVersion"]
    resumed = Watcher(client.watch(VS, "default", resource_version=since))
    events = resumed.take(2)
    assert [t for t, _ in events] == ["MODIFIED", "DELETED"]
    assert events[0][1]["spec"]["hosts"] == ["a2"]


def test_stopping_the_server_ends_watch_streams(tmp_path: Path) -> None:
    plane = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml")
    plane.server.start()
    client = Client(plane.server.url, token_of(plane))
    watcher = Watcher(client.watch(VS, None))
    time.sleep(0.3)
    started = time.monotonic()
    plane.close()
    assert watcher.take(1) == ["END"]
    assert time.monotonic() - started < 3
    with pytest.raises(
        Unreachable, match=re.escape("cannot reach the control plane at http://127.0.0.1:")
    ):
        client.list(VS, None)


def test_an_expired_watch_raises_expired(tmp_path: Path) -> None:
    store = ResourceStore(SqliteBackend(tmp_path / "s.db", history=2), validate=validate_or_raise)
    server = ApiServer("127.0.0.1:0", Api(store, TOKEN))
    server.start()
    try:
        client = Client(server.url, TOKEN)
        for hosts in (["a"], ["b"], ["c"], ["d"]):
            client.apply(virtual_service(hosts=hosts))
        with pytest.raises(Expired):
            list(client.watch(VS, "default", resource_version="1"))
    finally:
        server.stop()
        store.close()


def test_curl_sees_a_chunked_stream_of_json_lines(plane: ControlPlane, client: Client) -> None:
    client.apply(virtual_service("a"))
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "--max-time",
            "2",
            f"{plane.server.url}{VS_PATH}?watch=true&timeoutSeconds=1",
        ],
        capture_output=True,
        text=True,
    )
    lines = [json.loads(line) for line in curl.stdout.splitlines()]
    assert curl.returncode == 0, curl.stderr
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "a")]


def test_openapi_document_names_every_kind(plane: ControlPlane) -> None:
    for path in ("/openapi/v3", "/openapi.json"):
        with urllib.request.urlopen(plane.server.url + path, timeout=10) as response:
            document = json.loads(response.read())
        assert document["openapi"].startswith("3.")
        schemas = document["components"]["schemas"]
        for kind in registry():
            for version in kind.versions:
                assert schema_name(kind, version) in schemas
                assert (
                    kind.path(version, "{namespace}" if kind.namespaced else None)
                    in document["paths"]
                )
    vs = schemas["io.istio.networking.v1.VirtualService"]
    assert "hosts" in vs["properties"]["spec"]["properties"]
    item = document["paths"][
        "/apis/networking.istio.io/v1/namespaces/{namespace}/virtualservices/{name}"
    ]
    assert "application/apply-patch+yaml" in item["patch"]["requestBody"]["content"]


def test_token_and_client_config_are_private_and_kept_across_restarts(tmp_path: Path) -> None:
    config = tmp_path / "home" / "config.yaml"
    first = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", config)
    token = token_of(first)
    first.close()
    assert stat.S_IMODE((tmp_path / "data" / "token").stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    saved = yaml.safe_load(config.read_text())
    assert saved == {"server": first.server.url, "token": token}

    second = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", config)
    second.close()
    assert token_of(second) == token


def test_an_unreachable_server_has_a_clear_message() -> None:
    with pytest.raises(Unreachable) as raised:
        Client("http://127.0.0.1:9", None).list(VS, None)
    assert (
        str(raised.value)
        == 'cannot reach the control plane at http://127.0.0.1:9: is "pilotfish controlplane" running?'
    )


def test_chunked_uploads_and_oversized_bodies(plane: ControlPlane) -> None:
    url = f"{plane.server.url}{VS_PATH}/reviews?fieldManager=curl"
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "PATCH",
            url,
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/apply-patch+yaml",
            "-H",
            f"Authorization: Bearer {token_of(plane)}",
            "--data-binary",
            json.dumps(virtual_service()),
        ],
        capture_output=True,
        text=True,
    )
    assert json.loads(curl.stdout)["metadata"]["name"] == "reviews", curl.stdout + curl.stderr

    with socket.create_connection((plane.server.host, plane.server.port), timeout=5) as s:
        s.sendall(
            f"POST {VS_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
            f"Authorization: Bearer {token_of(plane)}\r\n\r\n".encode()
        )
        answer = b"".join(iter(lambda: s.recv(65536), b"")).decode()  # the server closes
    assert answer.startswith("HTTP/1.1 413") and '"reason":"RequestEntityTooLarge"' in answer
    assert '"message":"Request entity too large: limit is 3145728"' in answer
