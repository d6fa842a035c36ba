"""Bookinfo's productpage: the HTML page that calls details and reviews.

Behaves as Istio's Bookinfo does, so that Istio's tasks read the same against
it: `POST /login` with a form field `username` signs the user in (a session
cookie), and every call then carries `end-user: NAME`, which is what
`virtual-service-reviews-test-v2.yaml` matches on. Calls to reviews time out
after 3 s and are tried twice; what the page says when details, reviews or
ratings fail are Bookinfo's own words.

With DETAILS_GRPC_ADDR (host:port) productpage asks details over gRPC
(details.py's `/bookinfo.Details/GetDetails`) at that address, which in the
mesh is its sidecar's declared upstream for details' `grpc` port: so the demo
carries gRPC beside HTTP and TCP. Without it details is called over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import threading
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import common
import grpc
from google.protobuf import json_format, struct_pb2

SECRET = os.environ.get("SESSION_SECRET", "pilotfish-bookinfo").encode()
COOKIE = "session"
CALL_TIMEOUT_S = 3.0
REVIEWS_ATTEMPTS = 2
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
RATINGS_UNAVAILABLE = "Sorry, product ratings are currently unavailable for this book."
DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
DETAILS_GRPC_ADDR = os.environ.get("DETAILS_GRPC_ADDR", "")
# What the API answers when the gRPC call fails: gRPC's codes as HTTP statuses,
# as grpc-gateway maps them (anything else is a 500).
GRPC_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
PRODUCTS = [
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">'
        "Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> "
        "early plays. It is his shortest and one of his most farcical comedies, with a major "
        "part of the humour coming from slapstick and mistaken identity, in addition to puns "
        "and word play.",
    }
]


# -- the session: a signed cookie, so any productpage replica can read it ------------


def session_cookie(user: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"user": user}).encode()).decode()
    return f"{payload}.{_sign(payload)}"


def session_user(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    try:
        morsel = SimpleCookie(cookie_header).get(COOKIE)
    except CookieError:
        return None
    if morsel is None or "." not in morsel.value:
        return None
    payload, signature = morsel.value.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(payload)):
        return None
    try:
        user = json.loads(base64.urlsafe_b64decode(payload)).get("user")
    except ValueError:
        return None
    return user if isinstance(user, str) and user else None


def _sign(payload: str) -> str:
    return hmac.new(SECRET, payload.encode(), hashlib.sha256).hexdigest()[:32]


# -- calls -----------------------------------------------------------------------------


def outgoing_headers(incoming: Mapping[str, str], user: str | None) -> dict[str, str]:
    headers = common.forward_headers(incoming)
    headers.pop("end-user", None)
    if user:
        headers["end-user"] = user
    return headers


def product_details(book_id: int, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    if DETAILS_GRPC_ADDR:
        return grpc_details(book_id, headers)
    url = common.service_url("details", f"/details/{book_id}")
    status, body = common.call_json(url, headers, CALL_TIMEOUT_S)
    if status == 200 and isinstance(body, dict):
        return 200, body
    return status or 500, {"error": DETAILS_UNAVAILABLE}


_channel: grpc.Channel | None = None
_channel_lock = threading.Lock()


def _details_stub() -> Any:
    """One channel for the process (an HTTP/2 connection that every page's
    call shares). HTTP_PROXY is for the HTTP calls: gRPC goes straight to
    the declared upstream."""
    global _channel
    with _channel_lock:
        if _channel is None:
            options = [("grpc.enable_http_proxy", 0)]
            _channel = grpc.insecure_channel(DETAILS_GRPC_ADDR, options=options)
    return _channel.unary_unary(
        common.DETAILS_GRPC_METHOD,
        request_serializer=struct_pb2.Struct.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )


def grpc_metadata(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The forwarded headers as gRPC metadata, less what gRPC will not carry:
    its reserved grpc-* keys (grpc-trace-bin is binary, not this text),
    user-agent (gRPC sends its own), and values outside printable ASCII."""
    return [
        (name.lower(), value)
        for name, value in headers.items()
        if not name.lower().startswith("grpc-")
        and name.lower() != "user-agent"
        and all(" " <= c <= "~" for c in value)
    ]


def grpc_details(book_id: int, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    request = struct_pb2.Struct()
    request.update({"id": book_id})
    try:
        reply = _details_stub()(request, metadata=grpc_metadata(headers), timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        return GRPC_HTTP_STATUS.get(e.code(), 500), {"error": DETAILS_UNAVAILABLE}
    return 200, {k: _whole(v) for k, v in json_format.MessageToDict(reply).items()}


def _whole(value: Any) -> Any:
    """A Struct's numbers are doubles: the page shows 200 pages, not 200.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def product_reviews(book_id: int, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """Two tries of 3 s each, as Bookinfo's productpage does: Istio's
    request-timeouts and fault-injection tasks are written around that."""
    url = common.service_url("reviews", f"/reviews/{book_id}")
    status = 0
    for _ in range(REVIEWS_ATTEMPTS):
        status, body = common.call_json(url, headers, CALL_TIMEOUT_S)
        if status == 200 and isinstance(body, dict):
            return 200, body
    return status or 500, {"error": REVIEWS_UNAVAILABLE}


def product_ratings(book_id: int, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    url = common.service_url("ratings", f"/ratings/{book_id}")
    status, body = common.call_json(url, headers, CALL_TIMEOUT_S)
    if status == 200 and isinstance(body, dict):
        return 200, body
    return status or 500, {"error": RATINGS_UNAVAILABLE}


# -- the page --------------------------------------------------------------------------


def render_stars(rating: Mapping[str, Any]) -> str:
    if "error" in rating:
        return f'<p><i class="rating-error">{html.escape(str(rating["error"]))}</i></p>'
    stars = int(rating.get("stars", 0))
    color = html.escape(str(rating.get("color", "black")))
    full = '<span class="glyphicon glyphicon-star"></span>' * stars
    empty = '<span class="glyphicon glyphicon-star-empty"></span>' * (5 - stars)
    return f'<font color="{color}">{full}{empty}</font>'


def render_reviews(status: int, reviews: Mapping[str, Any]) -> str:
    if status != 200:
        return (
            "<h4><strong>Error fetching product reviews!</strong></h4>"
            f"<p>{html.escape(str(reviews.get('error', '')))}</p>"
        )
    parts = []
    for review in reviews.get("reviews") or []:
        rating = review.get("rating")
        parts.append(
            "<blockquote>"
            f"<p>{html.escape(str(review.get('text', '')))}</p>"
            f"<small>{html.escape(str(review.get('reviewer', '')))}</small>"
            f"{render_stars(rating) if isinstance(rating, dict) else ''}"
            "</blockquote>"
        )
    served_by = html.escape(str(reviews.get("podname", "")))
    parts.append(f"<dl><dt>Reviews served by:</dt><u>{served_by}</u></dl>")
    return "".join(parts)


def render_details(status: int, details: Mapping[str, Any]) -> str:
    if status != 200:
        return (
            "<h4><strong>Error fetching product details!</strong></h4>"
            f"<p>{html.escape(str(details.get('error', '')))}</p>"
        )
    rows = "".join(
        f"<dt>{html.escape(label)}:</dt>{html.escape(str(details.get(key, '')))}"
        for label, key in (
            ("Type", "type"),
            ("Pages", "pages"),
            ("Publisher", "publisher"),
            ("Language", "language"),
            ("ISBN-10", "ISBN-10"),
            ("ISBN-13", "ISBN-13"),
        )
    )
    return f"<h4>Book Details</h4><dl>{rows}</dl>"


def render_page(user: str | None, details: tuple[int, Any], reviews: tuple[int, Any]) -> str:
    product = PRODUCTS[0]
    account = (
        f'<p class="user">{html.escape(user)} <a href="logout">sign out</a></p>'
        if user
        else '<form method="post" action="login"><input name="username" placeholder="User">'
        '<input name="passwd" type="password" placeholder="Password">'
        '<button type="submit">Sign in</button></form>'
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Simple Bookstore App</title>"
        f"</head><body><nav><a href='/'>BookInfo Sample</a>{account}</nav>"
        f"<h3>{html.escape(str(product['title']))}</h3><p>{product['descriptionHtml']}</p>"
        f"<div class='details'>{render_details(*details)}</div>"
        f"<div class='reviews'><h4>Book Reviews</h4>{render_reviews(*reviews)}</div>"
        "</body></html>"
    )


INDEX = (
    "<!DOCTYPE html><html><head><title>Simple Bookstore App</title></head><body>"
    "<h3>Hello! This is a simple bookstore application consisting of three services "
    "as shown below</h3><p>Click on one of the links below to auto generate a request "
    'to the backend as a real user or a tester</p><p><a href="/productpage?u=normal">'
    'Normal user</a></p><p><a href="/productpage?u=test">Test user</a></p></body></html>'
)


class ProductPageHandler(common.Handler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            self.send(200, INDEX.encode(), "text/html; charset=utf-8")
        elif path == "/health":
            self.send(200, b"Product page is healthy", "text/plain")
        elif path == "/productpage":
            self._product_page()
        elif path == "/logout":
            self._redirect(f"{COOKIE}=; Path=/; Max-Age=0")
        elif path.startswith("/api/v1/products"):
            self._api(path.removeprefix("/api/v1/products").strip("/"))
        else:
            self.send(404, b"Not Found", "text/plain")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if self.path.split("?")[0] != "/login":
            self.send(404, b"Not Found", "text/plain")
            return
        user = (form.get("username") or [""])[0].strip()
        if not user:
            self._redirect(None)
            return
        self._redirect(f"{COOKIE}={session_cookie(user)}; Path=/; HttpOnly")

    def _redirect(self, cookie: str | None) -> None:
        extra = {"Location": "/productpage"}
        if cookie is not None:
            extra["Set-Cookie"] = cookie
        self.send(302, b"", "text/plain", extra)

    def _headers(self) -> tuple[str | None, dict[str, str]]:
        user = session_user(self.headers.get("Cookie"))
        return user, outgoing_headers(dict(self.headers.items()), user)

    def _product_page(self) -> None:
        user, headers = self._headers()
        details = product_details(0, headers)
        reviews = product_reviews(0, headers)
        page = render_page(user, details, reviews)
        self.send(200, page.encode(), "text/html; charset=utf-8")

    def _api(self, rest: str) -> None:
        _, headers = self._headers()
        parts = rest.split("/") if rest else []
        if not parts:
            self.send_json(200, [{"id": p["id"], "title": p["title"]} for p in PRODUCTS])
            return
        if not parts[0].isdigit() or len(parts) > 2:
            self.send_json(404, {"error": "Not Found"})
            return
        book_id = int(parts[0])
        fetch = {"reviews": product_reviews, "ratings": product_ratings}.get(
            parts[1] if len(parts) == 2 else "", product_details
        )
        self.send_json(*fetch(book_id, headers))


if __name__ == "__main__":
    common.serve(ProductPageHandler, "productpage")
