"""The one spelling of a Kubernetes-style object as Python holds it: decoded
JSON or YAML, keyed by field name. Every layer uses it, so it lives here, with
no imports of its own from pilotfish."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
