"""API errors, shaped like Kubernetes Status objects (code, reason, message)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


class ApiError(Exception):
    """An error a client can act on; `to_status()` is what goes on the wire."""

    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # True when a server sent it (a client says `Error from server` only then).
        self.from_server = False

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status

    @staticmethod
    def from_status(status: dict[str, Any]) -> ApiError:
        """Rebuild the error a server sent, keeping its class when the reason is known."""
        reason = status.get("reason", "")
        cls = next((c for c in _all_errors() if c.reason == reason), None)
        if cls is None:  # a reason this side has no class for keeps its reason and code
            code = status.get("code")
            attrs = {
                "reason": reason or ApiError.reason,
                "code": code if isinstance(code, int) else 500,
            }
            cls = type(str(attrs["reason"]), (ApiError,), attrs)
        error = cls(str(status.get("message", reason)))
        error.from_server = True
        return error


class BadRequest(ApiError):
    code = 400
    reason = "BadRequest"


class Unauthorized(ApiError):
    code = 401
    reason = "Unauthorized"


class Forbidden(ApiError):
    """A known caller (system:anonymous included) asked for what it may not do."""

    code = 403
    reason = "Forbidden"


class NotFound(ApiError):
    code = 404
    reason = "NotFound"


class MethodNotAllowed(ApiError):
    code = 405
    reason = "MethodNotAllowed"


class Conflict(ApiError):
    """A write lost a race (stale resourceVersion) or an apply hit another manager's field."""

    code = 409
    reason = "Conflict"


class AlreadyExists(ApiError):
    code = 409
    reason = "AlreadyExists"


class Expired(ApiError):
    """A watch asked for history the store no longer keeps."""

    code = 410
    reason = "Expired"


class RequestEntityTooLarge(ApiError):
    code = 413
    reason = "RequestEntityTooLarge"


class UnsupportedMediaType(ApiError):
    code = 415
    reason = "UnsupportedMediaType"


class Timeout(ApiError):
    code = 504
    reason = "Timeout"


def too_large_resource_version(requested: int, current: int) -> Timeout:
    """Kubernetes' answer to a watch or list from a revision the store has not
    reached: 504, retry after a second, with the cause clients look for."""
    return Timeout(
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


@dataclass(frozen=True)
class FieldError:
    """One reason an object is invalid: `path` is dotted with [i] indexes, like kubectl's."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class Invalid(ApiError):
    """An object failed validation; the message is one line per field error."""

    code = 422
    reason = "Invalid"

    @classmethod
    def of(cls, kind: str, name: str, errors: list[FieldError]) -> Invalid:
        """`VirtualService default/reviews: spec.http[0].route: Required value`, one per line."""
        return cls("\n".join(f"{kind} {name}: {e}" for e in errors))


def _all_errors() -> list[type[ApiError]]:
    return [
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        AlreadyExists,
        Expired,
        RequestEntityTooLarge,
        UnsupportedMediaType,
        Timeout,
        Invalid,
    ]
