"""Bookinfo's details service: the book's facts as JSON, at /details/ID."""

from __future__ import annotations

import os

import common

VERSION = os.environ.get("SERVICE_VERSION", "v1")


def book_details(book_id: int) -> dict[str, object]:
    return {
        "id": book_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


class DetailsHandler(common.Handler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/health":
            self.send_json(200, {"status": "Details is healthy"})
        elif path.startswith("/details/"):
            book_id = path.removeprefix("/details/")
            if not book_id.isdigit():
                self.send_json(400, {"error": "please provide numeric product id"})
                return
            self.send_json(200, book_details(int(book_id)))
        else:
            self.send_json(404, {"error": "Not Found"})

    do_HEAD = do_GET


if __name__ == "__main__":
    common.serve(DetailsHandler, f"details-{VERSION}")
