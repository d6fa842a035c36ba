"""The one spelling of a Kubernetes-style object as Python holds it: decoded
JSON or YAML, keyed by field name. Every layer uses it, so it lives here, with
no imports of its own from pilotfish."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# Fields the server writes on its own: a change of only these is none the user made.
SERVER_FIELDS = ("resourceVersion", "generation", "managedFields", "uid", "creationTimestamp")


def user_part(obj: Obj) -> Obj:
    """The object without its status and the metadata the server writes."""
    clean = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_FIELDS}
    return {**clean, "metadata": meta}
