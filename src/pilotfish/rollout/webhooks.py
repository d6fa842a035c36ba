"""Flagger's webhooks: who to call at each moment of a release, with what JSON,
and what the answer means.

As Flagger's controller (pkg/controller/webhook.go) does: a POST of the
CanaryWebhookPayload as JSON, a timeout from the hook (10s when unset), and
an answer of 200, 201 or 202 lets the release go on. Anything else, a higher
status, a refused connection, a timeout or a URL that cannot be used, is a
failed check or a closed gate, with a one-line message saying which hook and
why. `retries` retries what go-retryablehttp retries (no answer, 429, 5xx
but 501), waiting 1s, 2s, 4s... up to 30s in between.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import Message

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.client import opener_for
from pilotfish.objects import Obj
from pilotfish.rollout.canary import analysis_of
from pilotfish.rollout.status import CanaryStatus
from pilotfish.rollout.types import EVENT, ROLLOUT, WebhookResult

DEFAULT_TIMEOUT = "10s"  # Flagger's, for a timeout unset or shorter than two characters
LAST_OK_STATUS = 202  # Flagger fails a hook that answers above 202
MAX_RETRIES = 10
RETRY_WAIT_MIN_S = 1.0  # go-retryablehttp's defaults
RETRY_WAIT_MAX_S = 30.0
BODY_KEPT = 4096  # bytes of an answer read for the message
MESSAGE_CHARS = 200
# k8s.io/apimachinery's rand.SafeEncodeString alphabet: no vowels, no look-alikes.
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def hooks_of(canary: Obj, hook_type: str) -> list[Obj]:
    """The canary's webhooks of one type, in order; a hook without a type is
    a `rollout` hook, as in Flagger."""
    hooks = analysis_of(canary.get("spec") or {}).get("webhooks") or []
    return [h for h in hooks if isinstance(h, dict) and (h.get("type") or ROLLOUT) == hook_type]


def payload(
    canary: Obj,
    hook: Obj,
    *,
    phase: str,
    checksum: str,
    extra: Mapping[str, str] | None = None,
) -> Obj:
    """Flagger's CanaryWebhookPayload: name, namespace, phase, checksum and
    (when not empty) metadata. For an `event` hook the metadata is the event,
    `extra`'s eventMessage and eventType with a timestamp in milliseconds,
    then the hook's own metadata under keys not taken."""
    meta = canary.get("metadata") or {}
    metadata = _strings(hook.get("metadata"))
    if hook.get("type") == EVENT:
        event = {**_strings(extra), "timestamp": str(int(time.time() * 1000))}
        metadata = {**metadata, **event}
    body: Obj = {
        "name": str(meta.get("name") or ""),
        "namespace": str(meta.get("namespace") or "default"),
        "phase": phase,
        "checksum": checksum,
    }
    if metadata:
        body["metadata"] = metadata
    return body


def checksum(canary: Obj) -> str:
    """What identifies the canary's current configuration, as Flagger's
    canaryChecksum: a hash of status.trackedConfigs and lastAppliedSpec, in
    the same short alphabet (the value differs: Flagger hashes Go structs)."""
    status = CanaryStatus.of(canary.get("status"))
    fields = {
        "TrackedConfigs": dict(status.tracked_configs) if status.tracked_configs else None,
        "LastAppliedSpec": status.last_applied_spec or "",
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return "".join(_SAFE_ALPHABET[ord(c) % len(_SAFE_ALPHABET)] for c in str(_fnv32a(text)))


def call(hook: Obj, body: Obj) -> WebhookResult:
    """POST `body` to the hook: ok when it answered 200-202 in time."""
    name, kind = str(hook.get("name") or ""), str(hook.get("type") or ROLLOUT)
    url, mute = str(hook.get("url") or ""), bool(hook.get("muteAlert"))
    label = f'webhook "{name}" ({url or "no url"})'
    try:
        timeout = _timeout(hook)
        request = _request(url, body)
    except ValueError as e:
        return WebhookResult(name, kind, False, f"{label}: {_one_line(str(e))}", mute)
    retries = min(MAX_RETRIES, max(0, _int(hook.get("retries"))))
    opener = opener_for(url, insecure=bool(hook.get("disableTLS")))
    for attempt in range(retries + 1):
        outcome = _post(opener, request, timeout)
        if outcome.ok:
            return WebhookResult(name, kind, True, mute_alert=mute)
        if attempt == retries or not outcome.retry:
            break
        time.sleep(_backoff(attempt, outcome.retry_after))
    after = f" after {retries + 1} attempts" if retries else ""
    return WebhookResult(name, kind, False, f"{label}: {outcome.why}{after}", mute)


class _Outcome:
    """One attempt: ok, or why not and whether go-retryablehttp would retry."""

    def __init__(self, why: str = "", *, retry: bool = False, retry_after: float = 0.0) -> None:
        self.why, self.retry, self.retry_after = why, retry, retry_after

    def __repr__(self) -> str:
        return f"_Outcome({self.why!r}, retry={self.retry})"

    @property
    def ok(self) -> bool:
        return not self.why


def _post(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> _Outcome:
    try:
        with opener.open(request, timeout=timeout) as answer:
            code, text = answer.status, _text(answer.read(BODY_KEPT))
            headers = answer.headers
    except urllib.error.HTTPError as e:
        code, text, headers = e.code, _text(_read(e)), e.headers
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        return _Outcome(_one_line(f"no answer: {_cause(reason, timeout)}"), retry=True)
    except (http.client.HTTPException, ValueError) as e:
        return _Outcome(_one_line(f"no valid answer: {type(e).__name__} {e}"), retry=True)
    if code <= LAST_OK_STATUS:
        return _Outcome()
    why = f"answered {code}" + (f": {text}" if text else "")
    retry = code == 429 or (code >= 500 and code != 501)
    return _Outcome(why, retry=retry, retry_after=_retry_after(code, headers))


def _request(url: str, body: Obj) -> urllib.request.Request:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'"{url}" is not an http(s) URL')
    return urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )


def _timeout(hook: Obj) -> float:
    text = str(hook.get("timeout") or "")
    if len(text) < 2:
        text = DEFAULT_TIMEOUT
    seconds = parse_duration_ns(text) / 1e9
    if seconds <= 0:
        raise ValueError(f'timeout "{text}" must be positive')
    return seconds


def _backoff(attempt: int, retry_after: float) -> float:
    if retry_after > 0:
        return min(retry_after, RETRY_WAIT_MAX_S)
    return float(min(RETRY_WAIT_MIN_S * 2**attempt, RETRY_WAIT_MAX_S))


def _retry_after(code: int, headers: Message | None) -> float:
    """Seconds a 429 or 503 asks to wait (Retry-After in seconds), else 0."""
    if code not in (429, 503) or headers is None:
        return 0.0
    try:
        return max(0.0, float(headers.get("Retry-After") or 0))
    except ValueError:
        return 0.0


def _cause(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"timed out after {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason)


def _read(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read(BODY_KEPT)
    except OSError:
        return b""


def _text(raw: bytes) -> str:
    return _one_line(raw.decode("utf-8", "replace"))


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def _strings(mapping: object) -> dict[str, str]:
    if not isinstance(mapping, Mapping):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in mapping.items()}


def _fnv32a(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def _int(value: object) -> int:
    try:
        return int(str(value or 0))
    except ValueError:
        return 0
