"""Delegate VirtualServices: a root route's `delegate` replaced by the
delegate's routes, each merged with the root route (Istio's MergeHTTPRoutes).

A delegate route's match must narrow one of the root's matches; one that
contradicts every root match (a different exact path, a prefix outside the
root's) is dropped. Fields the delegate route leaves unset come from the root.
"""

from __future__ import annotations

import copy

from pilotfish.objects import Obj

_INHERITED = (
    "rewrite",
    "directResponse",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrorPercent",
    "mirrorPercentage",
    "corsPolicy",
    "mirrors",
    "headers",
)
_STRING_FIELDS = ("uri", "scheme", "method", "authority")
_MAPS = ("headers", "withoutHeaders", "queryParams", "sourceLabels")


def merge_http_routes(root: Obj, delegate_routes: tuple[Obj, ...]) -> list[Obj]:
    out = []
    for route in delegate_routes:
        merged = _merge_route(root, copy.deepcopy(route))
        if merged is not None:
            out.append(merged)
    return out


def _merge_route(root: Obj, leaf: Obj) -> Obj | None:
    matches = _merge_matches(root.get("match") or [], leaf.get("match") or [])
    if matches is None:
        return None
    leaf["match"] = matches
    leaf["name"] = _joined(root.get("name", ""), leaf.get("name", ""))
    for name in _INHERITED:
        if leaf.get(name) is None and root.get(name) is not None:
            leaf[name] = root[name]
    return leaf


def _joined(root: str, leaf: str) -> str:
    if not leaf:
        return root
    return f"{root}-{leaf}" if root else leaf


def _merge_matches(root: list[Obj], leaf: list[Obj]) -> list[Obj] | None:
    if not root:
        return leaf
    if not leaf:
        return root
    out = []
    for sub in leaf:
        fitting = [_merge_match(r, sub) for r in root if not _conflict(r, sub)]
        if not fitting:
            return None
        out += fitting
    return out


def _merge_match(root: Obj, leaf: Obj) -> Obj:
    out = dict(leaf)
    out["name"] = _joined(root.get("name", ""), leaf.get("name", ""))
    for name in (*_STRING_FIELDS, "port", "sourceNamespace", "gateways", "statPrefix"):
        if not out.get(name) and root.get(name):
            out[name] = root[name]
    for name in _MAPS:
        merged = {**(root.get(name) or {}), **(leaf.get(name) or {})}
        if merged:
            out[name] = merged
    return out


def _conflict(root: Obj, leaf: Obj) -> bool:
    for name in _STRING_FIELDS:
        if _string_conflict(root.get(name), leaf.get(name)):
            return True
    for name in ("headers", "withoutHeaders", "queryParams"):
        r = root.get(name) or {}
        if any(_string_conflict(r.get(k), v) for k, v in (leaf.get(name) or {}).items()):
            return True
    if bool(root.get("ignoreUriCase")) != bool(leaf.get("ignoreUriCase")):
        return True
    if root.get("port") and leaf.get("port") and root["port"] != leaf["port"]:
        return True
    if root.get("sourceNamespace") and leaf.get("sourceNamespace") != root["sourceNamespace"]:
        return True
    root_labels = root.get("sourceLabels") or {}
    if any(
        k in root_labels and root_labels[k] != v
        for k, v in (leaf.get("sourceLabels") or {}).items()
    ):
        return True
    root_gw, leaf_gw = root.get("gateways") or [], leaf.get("gateways") or []
    return bool(root_gw and leaf_gw and not set(leaf_gw) <= set(root_gw))


def _string_conflict(root: Obj | None, leaf: Obj | None) -> bool:
    """Whether `leaf` can match something `root` cannot (Istio's rules)."""
    if not root or not leaf:
        return False
    if "regex" in root or "regex" in leaf:
        return True
    if "exact" in root:
        return "prefix" in leaf or leaf.get("exact") != root["exact"]
    if "prefix" in root:
        narrower = leaf.get("prefix", leaf.get("exact"))
        return narrower is None or not str(narrower).startswith(str(root["prefix"]))
    return True
