"""Semantic rules: what a schema cannot say, checked once an object is well formed.

For Istio's kinds these are the rules of Istio's validating webhook
(pkg/config/validation), with Istio's messages placed at the field they are
about; for the core and pilotfish kinds, the cross-field rules of Kubernetes'
own validation. Each kind's rules are one function, found by (group, kind).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pilotfish.api.errors import FieldError
from pilotfish.api.kinds import Kind
from pilotfish.api.names import show
from pilotfish.objects import Obj


class Errors:
    """Collects FieldErrors; `invalid` names the value, `add` gives a plain reason."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, path: str, *reasons: str) -> None:
        self.items.extend(FieldError(path, r) for r in reasons)

    def invalid(self, path: str, value: Any, *reasons: str) -> None:
        self.items.extend(FieldError(path, f"Invalid value: {show(value)}: {r}") for r in reasons)


Rules = Callable[[Obj, Errors], None]


def semantic_errors(kind: Kind, obj: Obj) -> list[FieldError]:
    rules = _rules().get((kind.group, kind.kind))
    if rules is None:
        return []
    errors = Errors()
    rules(obj, errors)
    return errors.items


@functools.cache
def _rules() -> dict[tuple[str, str], Rules]:
    # Imported here: the rule modules import Errors from this one.
    from pilotfish.api import (
        semantic_core,
        semantic_flagger,
        semantic_networking,
        semantic_routing,
        semantic_security,
        semantic_workload,
    )

    return {
        **semantic_networking.RULES,
        **semantic_routing.RULES,
        **semantic_security.RULES,
        **semantic_core.RULES,
        **semantic_workload.RULES,
        **semantic_flagger.RULES,
    }
