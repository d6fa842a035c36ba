"""Flagger's alerts: a Canary's `analysis.alerts` name AlertProviders (Slack,
Microsoft Teams, Discord, Rocket.Chat, Google Chat), and the controller
posts each provider the messages at or above the alert's severity, in the
provider's own message format.

Severity, as Flagger: an alert at `info` (the default) gets everything, one
at `warn` gets warn and error messages, one at `error` only errors. The
provider's address is its `spec.address`, or the `address` key of the Secret
its `spec.secretRef` names (a `token` key there is sent as a bearer token);
`spec.proxy` is an HTTP(S) proxy to post through. A failed post is reported
back and never holds the release up. A Canary without alerts sends none
(Flagger's install-time global notifier has no counterpart here).
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.error
import urllib.request
from collections.abc import Callable

from pilotfish.client import opener_for
from pilotfish.objects import Obj
from pilotfish.rollout.canary import Canary, Strategy
from pilotfish.rollout.phases import Alert

Lookup = Callable[[str, str, str], Obj | None]  # kind, namespace, name -> object or None
Fields = list[tuple[str, str]]
POST_TIMEOUT_S = 5.0  # Flagger's
TYPES = ("slack", "msteams", "discord", "rocket", "gchat")
_SEVERITIES = ("info", "warn", "error")


def send(canary: Canary, alert: Alert, lookup: Lookup) -> list[str]:
    """Post `alert` to every provider the Canary's alerts want it for; what
    went wrong, one line per provider."""
    alerts = canary.analysis.get("alerts") or []
    fields = metadata_fields(canary) if alert.metadata else []
    errors = []
    for wanted in alerts:
        if not wants(str(wanted.get("severity") or "info"), alert.severity):
            continue
        ref = wanted.get("providerRef") or {}
        namespace = ref.get("namespace") or canary.namespace
        where = f"alert provider {ref.get('name')}.{namespace}"
        try:
            provider = _provider(lookup, namespace, str(ref.get("name") or ""))
            payload = message(provider, canary, alert, fields)
            post(provider["url"], payload, provider["token"], provider["proxy"])
        except ValueError as e:
            errors.append(f"{where}: {e}")
    return errors


def wants(alert_severity: str, severity: str) -> bool:
    """Whether an alert at `alert_severity` gets a message at `severity`."""
    if alert_severity not in _SEVERITIES[1:]:
        return True
    return _SEVERITIES.index(severity) >= _SEVERITIES.index(alert_severity)


def metadata_fields(canary: Canary) -> Fields:
    """What Flagger adds to the initialization and new-revision alerts."""
    analysis = canary.analysis
    routing = {Strategy.AB: "A/B Testing", Strategy.BLUE_GREEN: "Blue/Green"}.get(canary.strategy)
    if routing is None and analysis.get("stepWeight"):
        routing = f"Weight step: {analysis['stepWeight']} max: {canary.max_weight}"
    elif routing is None and analysis.get("stepWeights"):
        steps = ",".join(str(w) for w in analysis["stepWeights"])
        routing = f"Weight steps: {steps} max: {canary.max_weight}"
    fields = [
        ("Target", f"{canary.target_kind}/{canary.target}.{canary.namespace}"),
        ("Failed checks threshold", str(canary.threshold)),
        ("Progress deadline", f"{canary.progress_deadline_s:g}s"),
    ]
    return fields + ([("Traffic routing", routing)] if routing else [])


def message(provider: Obj, canary: Canary, alert: Alert, fields: Fields) -> Obj:
    """The JSON body a provider of this type takes."""
    kind, who = provider["type"], f"{canary.name}.{canary.namespace}"
    error = alert.severity == "error"
    if kind == "msteams":
        return {
            "@type": "MessageCard",
            "@context": "http://schema.org/extensions",
            "themeColor": "FF0000" if error else "0076D7",
            "summary": who,
            "sections": [
                {
                    "activityTitle": alert.message,
                    "activitySubtitle": who,
                    "facts": [{"name": n, "value": v} for n, v in fields],
                }
            ],
        }
    if kind == "gchat":
        grey = "<font color=#848484><strong>{}</strong></font>"
        texts = [grey.format(alert.message)] + [f"{n}<br>{grey.format(v)}" for n, v in fields]
        header = {
            "title": "Flagger",
            "subtitle": who,
            "imageUrl": "https://flagger.app/favicon.png",
        }
        sections = [{"widgets": [{"textParagraph": {"text": t}}]} for t in texts]
        return {"cards": [{"header": header, "sections": sections}]}
    # Slack, and the Slack-compatible Discord and Rocket.Chat hooks
    colors = ("#FF0000", "#0076D7") if kind == "rocket" else ("danger", "good")
    attachment = {
        "color": colors[0] if error else colors[1],
        "author_name": who,
        "text": alert.message,
        "mrkdwn_in": ["text"],
        "fields": [{"title": n, "value": v, "short": False} for n, v in fields],
    }
    return {
        "channel": provider["channel"],
        "username": provider["username"],
        "icon_url": "",
        "icon_emoji": ":rocket:",
        "attachments": [attachment],
    }


def post(url: str, payload: Obj, token: str = "", proxy: str = "") -> None:
    """POST the payload as JSON; ValueError says why it did not get a 2xx."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), headers=headers, method="POST"
    )
    try:
        with opener_for(url, proxy=proxy).open(request, timeout=POST_TIMEOUT_S):
            return
    except urllib.error.HTTPError as e:
        body = e.read(200).decode("utf-8", "replace").strip()
        raise ValueError(f"{url} answered {e.code}: {body}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"{url}: {reason}") from e


def _provider(lookup: Lookup, namespace: str, name: str) -> Obj:
    """The provider's type, address, token, proxy, username and channel."""
    found = lookup("AlertProvider", namespace, name)
    if found is None:
        raise ValueError("not found")
    spec = found.get("spec") or {}
    kind = str(spec.get("type") or "")
    if kind not in TYPES:
        raise ValueError(f"provider {kind} not supported")
    url, token = str(spec.get("address") or ""), ""
    secret_ref = spec.get("secretRef")
    if secret_ref:
        url, token = _from_secret(lookup, namespace, str(secret_ref.get("name") or ""))
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"invalid hook URL {url!r}")
    if kind == "discord" and not url.endswith("/slack"):
        url = url.rstrip("/") + "/slack"  # Discord's Slack-compatible endpoint
    return {
        "type": kind,
        "url": url,
        "token": token,
        "proxy": str(spec.get("proxy") or ""),
        "username": str(spec.get("username") or "flagger"),
        "channel": str(spec.get("channel") or "general"),
    }


def _from_secret(lookup: Lookup, namespace: str, name: str) -> tuple[str, str]:
    secret = lookup("Secret", namespace, name)
    if secret is None:
        raise ValueError(f"secretRef: Secret {name} not found")
    data = {**_decoded(secret.get("data") or {}), **(secret.get("stringData") or {})}
    if "address" not in data:
        raise ValueError(f"secretRef: Secret {name} has no address")
    return str(data["address"]), str(data.get("token") or "")


def _decoded(data: Obj) -> dict[str, str]:
    try:
        return {k: base64.b64decode(str(v), validate=True).decode() for k, v in data.items()}
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ValueError(f"secretRef: data is not base64: {e}") from e
