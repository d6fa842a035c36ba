"""PF0001's table stays true: each row's evidence (what enforcing it would put
in the source) is absent today, and the analyzer warns on each row."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.analysis import analyze
from pilotfish.analysis.unenforced import TABLE, Unenforced
from pilotfish.api.kinds import registry
from pilotfish.model.snapshot import MESH_KINDS

SRC = Path(__file__).resolve().parents[2] / "src" / "pilotfish"


def _source(package: str) -> str:
    return "\n".join(p.read_text() for p in sorted((SRC / package).rglob("*.py")))


@pytest.mark.parametrize("row", TABLE, ids=[f"{r.kind}:{r.field or '*'}" for r in TABLE])
def test_row_is_still_not_enforced(row: Unenforced) -> None:
    """When this fails, the thing is enforced now: delete its row from TABLE."""
    for package, needle in row.evidence:
        assert needle not in _source(package), f"{package}/ now has {needle!r}"
    if not row.field:
        assert (row.group, row.kind) not in MESH_KINDS  # no snapshot reads the kind


def _obj(row: Unenforced) -> dict[str, object]:
    """An object of the row's kind with something at the row's field."""
    [kind] = [k for k in registry() if (k.group, k.kind) == (row.group, row.kind)]
    body: dict[str, object] = {
        "apiVersion": f"{row.group}/{kind.versions[0]}",
        "kind": row.kind,
        "metadata": {"name": "x", "namespace": "default"},
    }
    node = body
    for step in row.field.split(".") if row.field else []:
        name = step.removesuffix("[]")
        child: dict[str, object] = {}
        node[name] = [child] if step.endswith("[]") else child
        node = child
    if row.field:
        node["mode"] = "SIMPLE"
    return body


@pytest.mark.parametrize("row", TABLE, ids=[f"{r.kind}:{r.field or '*'}" for r in TABLE])
def test_each_row_warns_with_pf0001(row: Unenforced) -> None:
    [message] = [m for m in analyze([_obj(row)]) if m.type.code == "PF0001"]
    what = f"{row.kind} {row.field}" if row.field else row.kind
    assert str(message) == (
        f"Warning [PF0001] ({row.kind} default/x) {what} is stored but not enforced "
        f"by pilotfish: {row.reason}"
    )


def test_absent_or_empty_fields_do_not_warn() -> None:
    dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}},
    }
    assert [m for m in analyze([dr]) if m.type.code == "PF0001"] == []
