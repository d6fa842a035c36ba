"""Bookinfo's reviews service, in its three versions, chosen as Istio's
deployments choose them: ENABLE_RATINGS (v1: false) and STAR_COLOR (v2:
black, v3: red). With ratings on it calls ratings, forwarding the caller's
trace and user headers, and waits 10 s for black stars, 2.5 s for red, as
Bookinfo's Java service does; a failed call shows as the rating's error.

For release demos a build can be made faulty: FAULT_PERCENT of /reviews
requests are answered 500 (spread evenly: with 33, every third one), and
FAULT_DELAY_MS is added to each of them."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Mapping

import common

RATINGS_ENABLED = os.environ.get("ENABLE_RATINGS", "false").lower() == "true"
STAR_COLOR = os.environ.get("STAR_COLOR", "black")
FAULT_PERCENT = float(os.environ.get("FAULT_PERCENT", "0"))
FAULT_DELAY_S = float(os.environ.get("FAULT_DELAY_MS", "0")) / 1000
_served = itertools.count()
_served_lock = threading.Lock()
RATINGS_TIMEOUT_S = 10.0 if STAR_COLOR == "black" else 2.5
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
REVIEWS = (
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared "
        "to other plays by Shakespeare.",
    ),
)


def fetch_ratings(book_id: int, headers: Mapping[str, str]) -> dict[str, int] | None:
    status, body = common.call_json(
        common.service_url("ratings", f"/ratings/{book_id}"), headers, RATINGS_TIMEOUT_S
    )
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("ratings"), dict):
        return None
    return {str(k): int(v) for k, v in body["ratings"].items()}


def reviews_document(book_id: int, ratings: dict[str, int] | None) -> dict[str, object]:
    reviews = []
    for reviewer, text in REVIEWS:
        review: dict[str, object] = {"reviewer": reviewer, "text": text}
        if RATINGS_ENABLED:
            stars = (ratings or {}).get(reviewer)
            review["rating"] = (
                {"stars": stars, "color": STAR_COLOR}
                if stars is not None
                else {"error": RATINGS_UNAVAILABLE}
            )
        reviews.append(review)
    return {
        "id": str(book_id),
        "podname": common.instance_name("reviews"),
        "clustername": "null",
        "reviews": reviews,
    }


def faulty_turn() -> bool:
    """Whether this request is one of the FAULT_PERCENT that fail: the n-th
    fails when n * percent crosses a multiple of 100."""
    with _served_lock:
        n = next(_served)
    return (n + 1) * FAULT_PERCENT // 100 > n * FAULT_PERCENT // 100


class ReviewsHandler(common.Handler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/health":
            self.send_json(200, {"status": "Reviews is healthy"})
        elif path.startswith("/reviews/"):
            book_id = path.removeprefix("/reviews/")
            if not book_id.isdigit():
                self.send_json(400, {"error": "please provide numeric product id"})
                return
            time.sleep(FAULT_DELAY_S)
            if faulty_turn():
                self.send_json(500, {"error": "faulty build"})
                return
            headers = common.forward_headers(dict(self.headers.items()))
            ratings = fetch_ratings(int(book_id), headers) if RATINGS_ENABLED else None
            self.send_json(200, reviews_document(int(book_id), ratings))
        else:
            self.send_json(404, {"error": "Not Found"})

    do_HEAD = do_GET


if __name__ == "__main__":
    common.serve(ReviewsHandler, "reviews")
