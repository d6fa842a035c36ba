"""Flagger's webhooks: who to call for each moment of a release, with what
JSON, and what the answer means (2xx: go on; anything else, including a
timeout or a refused connection: a failed check or a closed gate)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.rollout.types import EVENT, ROLLOUT, WebhookResult

Obj = dict[str, Any]
DEFAULT_TIMEOUT_S = 10.0
BODY_IN_MESSAGE = 200  # characters of a refusal's body kept in the event
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def hooks_of(canary: Obj, hook_type: str) -> list[Obj]:
    """The canary's webhooks of one type (an untyped one is a rollout hook)."""
    analysis = (canary.get("spec") or {}).get("analysis") or {}
    return [h for h in analysis.get("webhooks") or [] if (h.get("type") or ROLLOUT) == hook_type]


def payload(
    canary: Obj, hook: Obj, *, phase: str, checksum: str, extra: Mapping[str, str] | None = None
) -> Obj:
    """Flagger's CanaryWebhookPayload; an event hook's metadata is the event."""
    meta = canary["metadata"]
    if hook.get("type") == EVENT:
        metadata = {**(extra or {}), "timestamp": str(int(time.time() * 1000))}
    else:
        metadata = {str(k): str(v) for k, v in (hook.get("metadata") or {}).items()}
    body: Obj = {
        "name": meta["name"],
        "namespace": meta.get("namespace") or "default",
        "phase": phase,
        "checksum": checksum,
        "type": hook.get("type") or ROLLOUT,
    }
    if metadata:
        body["metadata"] = metadata
    return body


def call(hook: Obj, body: Obj) -> WebhookResult:
    """POST `body` to the hook, retrying as many times as it says."""
    name, kind = str(hook.get("name", "")), str(hook.get("type") or ROLLOUT)
    attempts = 1 + max(0, int(hook.get("retries") or 0))
    message = ""
    for _ in range(attempts):
        message = _post(hook, body)
        if not message:
            return WebhookResult(name, kind, True)
    return WebhookResult(name, kind, False, message)


def _post(hook: Obj, body: Obj) -> str:
    """"" when the hook answered 2xx, else why not in one line."""
    url = str(hook.get("url", ""))
    try:
        timeout = _timeout(hook)
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _DIRECT.open(request, timeout=timeout) as answer:
            if 200 <= answer.status < 300:
                return ""
            return f"{url} answered {answer.status}"
    except urllib.error.HTTPError as e:
        text = _read(e)
        return f"{url} answered {e.code}" + (f": {text}" if text else "")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        return f"{url} cannot be reached: {reason}"
    except ValueError as e:
        return f"{url or 'the url'} is not usable: {e}"


def _timeout(hook: Obj) -> float:
    text = hook.get("timeout")
    if not text:
        return DEFAULT_TIMEOUT_S
    return parse_duration_ns(str(text)) / 1e9


def _read(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(BODY_IN_MESSAGE).decode("utf-8", "replace").strip()
    except OSError:
        return ""
