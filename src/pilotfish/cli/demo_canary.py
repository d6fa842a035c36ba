"""`pilotfish demo --canary`: Bookinfo with reviews released by a Flagger
Canary (examples/canary) instead of three fixed versions. Once the mesh is
up, the demo releases reviews v3, which the analysis promotes step by step,
then a faulty build, which it rolls back on its own; every decision shows
as it is made. The page shows the stars turn red as traffic moves."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import registry
from pilotfish.cli.commands import CliError, apply_documents, events_of
from pilotfish.cli.manifests import Document, read_documents
from pilotfish.cli.rollout import DONE
from pilotfish.client import Client
from pilotfish.objects import Obj
from pilotfish.rollout.status import CanaryStatus

CANARY = "reviews"
SETUP_FILES = ("10-reviews.yaml", "20-canary.yaml")
RELEASES = (
    ("release-v3.yaml", "reviews v3 (red stars)"),
    ("release-faulty.yaml", "a faulty build of reviews (one answer in three is a 500)"),
)
DEFAULT_API = "127.0.0.1:15080"
RELEASE_TIMEOUT_S = 300.0


def canary_documents(bookinfo: list[Document], examples: Path, listen: str) -> list[Document]:
    """Bookinfo less what the Canary replaces (the reviews-v1/v2/v3 Workloads,
    reviews' VirtualService and DestinationRule), plus the Canary's Workload
    and the Canary itself, its load tester on this demo's API address."""
    missing = [f for f in SETUP_FILES if not (examples / f).exists()]
    if missing:
        raise CliError(f"{examples} lacks {', '.join(missing)}: is it examples/canary?")
    kept = [d for d in bookinfo if not _replaced(d.obj)]
    added = read_documents([str(examples / f) for f in SETUP_FILES])
    return kept + [Document(d.source, d.index, _on_api(d.obj, listen)) for d in added]


def remove_leftovers(client: Client, docs: list[Document]) -> list[str]:
    """Delete the Workloads an earlier Bookinfo demo left in this store that
    the canary's service would select (reviews-v1/v2/v3, labelled app=reviews
    like the Canary's own); the names deleted."""
    kind = registry().resolve("Workload")
    declared = {(d.obj.get("metadata") or {}).get("name") for d in docs}
    removed = []
    for obj in client.list(kind, "default").get("items") or []:
        name = obj["metadata"]["name"]
        if _replaced(obj) and name not in declared:
            client.delete(kind, name, "default")
            removed.append(name)
    return removed


def _replaced(obj: Obj) -> bool:
    kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
    if kind == "Workload":
        return ((obj.get("spec") or {}).get("labels") or {}).get("app") == CANARY
    return kind in ("VirtualService", "DestinationRule") and name == CANARY


def _on_api(obj: Obj, listen: str) -> Obj:
    if obj.get("kind") != "Canary":
        return obj
    for hook in (obj["spec"].get("analysis") or {}).get("webhooks") or []:
        hook["url"] = str(hook.get("url", "")).replace(DEFAULT_API, listen)
    return obj


def run_releases(client: Client, examples: Path, stop: threading.Event) -> bool:
    """Wait for the Canary to take over reviews, then each release in turn,
    printing its events; False if stopped or a release did not end."""
    print("\nwaiting for the Canary to take over reviews ...", flush=True)
    seen: set[tuple[str, int]] = set()
    if _follow(client, stop, seen, until=("Initialized",)) is None:
        return False
    outcomes = []
    for file, what in RELEASES:
        path = examples / file
        print(f"\nreleasing {what}:\n  pilotfish apply -f {path}", flush=True)
        if not apply_documents(client, read_documents([str(path)]), None):
            return False
        phase = _follow(client, stop, seen, until=DONE, fresh=True)
        if phase is None:
            return False
        outcomes.append(f"  {file}: {phase}")
    print("\nreleases done:\n" + "\n".join(outcomes), flush=True)
    return True


def _follow(
    client: Client,
    stop: threading.Event,
    seen: set[tuple[str, int]],
    *,
    until: tuple[str, ...],
    fresh: bool = False,
) -> str | None:
    """Print the Canary's new events until its phase is one of `until` (after
    having left it, when `fresh`); that phase, or None on stop or timeout."""
    left = not fresh
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        canary = _canary(client)
        if canary is not None:
            _print_new_events(client, canary, seen)
            phase = (canary.get("status") or {}).get("phase", "")
            left = left or phase not in until
            if left and phase in until:
                return str(phase)
        stop.wait(1.0)
    return None


def _canary(client: Client) -> Obj | None:
    try:
        return client.get(registry().resolve("Canary"), CANARY, "default")
    except ApiError:
        return None


def _print_new_events(client: Client, canary: Obj, seen: set[tuple[str, int]]) -> None:
    weight = CanaryStatus.of(canary.get("status")).canary_weight
    for event in events_of(client, canary):
        key = (event["metadata"]["name"], int(event.get("count") or 1))
        if key in seen:
            continue
        seen.add(key)
        mark = "!" if event.get("type") == "Warning" else " "
        print(f"  {mark} [canary {weight:>3}%] {event.get('message', '')}", flush=True)
