"""Bookinfo's ratings service: the stars each reviewer gave, at /ratings/ID."""

from __future__ import annotations

import os

import common

VERSION = os.environ.get("SERVICE_VERSION", "v1")
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


class RatingsHandler(common.Handler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/health":
            self.send_json(200, {"status": "Ratings is healthy"})
        elif path.startswith("/ratings/"):
            book_id = path.removeprefix("/ratings/")
            if not book_id.isdigit():
                self.send_json(400, {"error": "please provide numeric product ID"})
                return
            self.send_json(200, {"id": int(book_id), "ratings": RATINGS})
        else:
            self.send_json(404, {"error": "Not Found"})

    do_HEAD = do_GET


if __name__ == "__main__":
    common.serve(RatingsHandler, f"ratings-{VERSION}")
