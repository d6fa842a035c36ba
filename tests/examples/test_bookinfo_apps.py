"""The Bookinfo apps on their own, behind a stand-in sidecar: pages, calls,
header propagation, and Bookinfo's own words when a service fails."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.examples.bookinfo_harness import (
    APPS,
    VARIANTS,
    App,
    FakeMesh,
    fake_mesh,
    start_app,
    stop,
)

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeMesh, dict[str, App]]]:
    log_dir: Path = tmp_path_factory.mktemp("bookinfo")
    with fake_mesh() as (mesh, proxy):
        apps: dict[str, App] = {}
        try:
            for variant in VARIANTS:
                apps[variant] = start_app(variant, proxy, log_dir)
            yield mesh, apps
        finally:
            for app in apps.values():
                stop(app.process)


@pytest.fixture
def mesh(bookinfo: tuple[FakeMesh, dict[str, App]]) -> Iterator[FakeMesh]:
    fake, apps = bookinfo
    fake.routes = {name: apps[name].port for name in ("details", "ratings")}
    fake.routes["reviews"] = apps["reviews-v1"].port
    fake.faults.clear()
    fake.seen.clear()
    yield fake


def use_reviews(mesh: FakeMesh, apps: dict[str, App], version: str) -> None:
    mesh.routes["reviews"] = apps[f"reviews-{version}"].port


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with DIRECT.open(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def page(apps: dict[str, App], headers: dict[str, str] | None = None) -> str:
    status, body = get(f"{apps['productpage'].url}/productpage", headers)
    assert status == 200
    return body


def test_details_ratings_and_health(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    apps = bookinfo[1]
    status, body = get(f"{apps['details'].url}/details/0")
    assert status == 200 and json.loads(body)["ISBN-10"] == "1234567890"
    status, body = get(f"{apps['ratings'].url}/ratings/0")
    assert json.loads(body) == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
    assert get(f"{apps['ratings'].url}/ratings/x")[0] == 400
    for name in VARIANTS:
        assert get(f"{apps[name].url}/health")[0] == 200


def test_reviews_v1_has_no_stars_and_does_not_call_ratings(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    body = page(bookinfo[1])
    assert "The Comedy of Errors" in body and "paperback" in body
    assert "An extremely entertaining play by Shakespeare" in body
    assert "glyphicon-star" not in body
    assert "<dt>Reviews served by:</dt><u>reviews-v1-0</u>" in body
    assert [s.path for s in mesh.calls_to("details")] == ["/details/0"]
    assert [s.path for s in mesh.calls_to("reviews")] == ["/reviews/0"]
    assert mesh.calls_to("ratings") == []


@pytest.mark.parametrize(("version", "color"), [("v2", "black"), ("v3", "red")])
def test_reviews_v2_v3_show_stars_in_their_colour(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh, version: str, color: str
) -> None:
    use_reviews(mesh, bookinfo[1], version)
    body = page(bookinfo[1])
    assert f'<font color="{color}">' + '<span class="glyphicon glyphicon-star"></span>' * 5 in body
    assert body.count("glyphicon-star-empty") == 1  # Reviewer2 gave 4 of 5
    assert f"reviews-{version}-0" in body
    assert [s.path for s in mesh.calls_to("ratings")] == ["/ratings/0"]


def test_login_sends_end_user_on_every_call_down_the_chain(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    apps = bookinfo[1]
    use_reviews(mesh, apps, "v2")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    request = urllib.request.Request(
        f"{apps['productpage'].url}/login", data=b"username=jason&passwd=x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=10)
    assert redirect.value.code == 302 and redirect.value.headers["Location"] == "/productpage"
    cookie = redirect.value.headers["Set-Cookie"].split(";")[0]
    body = page(apps, {"Cookie": cookie})
    assert "jason" in body and "sign out" in body
    for service in ("details", "reviews", "ratings"):
        calls = mesh.calls_to(service)
        assert calls and calls[0].headers.get("end-user") == "jason", service
    assert mesh.calls_to("reviews")[0].headers.get("cookie") == cookie


def test_a_forged_session_is_anonymous(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    page(bookinfo[1], {"Cookie": "session=eyJ1c2VyIjogImphc29uIn0=.0000", "end-user": "mallory"})
    assert "end-user" not in mesh.calls_to("reviews")[0].headers


def test_trace_headers_are_propagated(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    use_reviews(mesh, bookinfo[1], "v3")
    trace = {
        "x-request-id": "8b1c5bb0-1a77-4f6c-9d12-2f9a6e0bd8a1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "x-unrelated": "dropped",
    }
    page(bookinfo[1], trace)
    for service in ("details", "reviews", "ratings"):
        headers = mesh.calls_to(service)[0].headers
        for name in ("x-request-id", "traceparent", "b3", "x-b3-traceid"):
            assert headers.get(name) == trace[name], (service, name)
        assert "x-unrelated" not in headers


def test_reviews_failing_shows_bookinfos_message_after_two_tries(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    mesh.faults["reviews"] = 503
    body = page(bookinfo[1])
    assert "Error fetching product reviews!" in body
    assert "Sorry, product reviews are currently unavailable for this book." in body
    assert "paperback" in body  # details still shown
    assert len(mesh.calls_to("reviews")) == 2


def test_ratings_failing_shows_ratings_unavailable(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    use_reviews(mesh, bookinfo[1], "v2")
    mesh.faults["ratings"] = 500
    body = page(bookinfo[1])
    assert body.count("Ratings service is currently unavailable") == 2
    assert "Error fetching product reviews!" not in body


def test_details_failing_shows_details_unavailable(
    bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh
) -> None:
    mesh.faults["details"] = 500
    body = page(bookinfo[1])
    assert "Error fetching product details!" in body
    assert "Sorry, product details are currently unavailable for this book." in body
    assert "An extremely entertaining play" in body


def test_product_api(bookinfo: tuple[FakeMesh, dict[str, App]], mesh: FakeMesh) -> None:
    url = bookinfo[1]["productpage"].url
    assert json.loads(get(f"{url}/api/v1/products")[1]) == [
        {"id": 0, "title": "The Comedy of Errors"}
    ]
    assert json.loads(get(f"{url}/api/v1/products/0")[1])["author"] == "William Shakespeare"
    assert json.loads(get(f"{url}/api/v1/products/0/reviews")[1])["podname"] == "reviews-v1-0"
    assert json.loads(get(f"{url}/api/v1/products/0/ratings")[1])["ratings"]["Reviewer1"] == 5


def test_sigterm_stops_an_app_cleanly(tmp_path: Path) -> None:
    with fake_mesh() as (_, proxy):
        app = start_app("ratings", proxy, tmp_path)
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(timeout=5) == 0


def test_an_answer_leaves_the_app_in_one_write() -> None:
    """Chaos kills apps with SIGKILL. Between a head's write and its body's,
    that would leave the caller a status whose body never comes."""
    spec = importlib.util.spec_from_file_location("bookinfo_common", APPS / "common.py")
    assert spec and spec.loader
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    writes: list[bytes] = []

    class Recording(socket.socket):
        def send(self, data: Any, *args: Any) -> int:
            writes.append(bytes(data))
            return super().send(data, *args)

        def sendall(self, data: Any, *args: Any) -> None:
            writes.append(bytes(data))
            super().sendall(data, *args)

    class Page(common.Handler):  # type: ignore[name-defined,misc]
        def do_GET(self) -> None:
            self.send(200, b"x" * 1322, "text/html")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    caller, app_end = socket.socketpair()
    with caller:
        caller.sendall(
            b"GET /productpage HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n"
        )
        Page(Recording(fileno=app_end.detach()), ("127.0.0.1", 0), None)
        assert len(writes) == 1
        assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(
            b"\r\n\r\n" + b"x" * 1322
        )
