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
    what = f"{row.kind} {row.field}" if row.field else row.kind
    # rows may nest (spec.tcp and a field under it): this row's own message
    [message] = [
        m for m in analyze([_obj(row)]) if m.type.code == "PF0001" and f") {what} is " in str(m)
    ]
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


def test_the_source_reads_no_istio_annotation_but_the_honoured_ones() -> None:
    """When this fails, pilotfish now acts on an Istio annotation: add it to
    HONOURED_ANNOTATIONS (and say where it applies)."""
    import re

    from pilotfish.analysis.unenforced import HONOURED_ANNOTATIONS, istio_annotation

    quoted = re.compile(r'"([a-z0-9.-]*istio\.io/[A-Za-z0-9.-]+)"')
    read = {
        key
        for package in (
            "translate",
            "model",
            "registry",
            "agent",
            "proxy",
            "rollout",
            "controlplane",
        )
        for key in quoted.findall(_source(package))
        if istio_annotation(key) and not key.endswith(("/v1", "/v1beta1", "/v1alpha3", "/v1alpha1"))
    }
    labels = {  # labels, not annotations
        "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision",
        "topology.istio.io/subzone",
    }
    assert read - labels <= set(HONOURED_ANNOTATIONS)


def test_istio_annotations_pilotfish_ignores_warn_and_suppressions_hold() -> None:
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "r",
            "namespace": "default",
            "annotations": {"sidecar.istio.io/inject": "false", "example.com/x": "y"},
        },
        "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "nowhere"}}]}]},
    }
    found = [str(m) for m in analyze([vs]) if m.type.code in ("PF0001", "IST0101")]
    assert found == [
        'Error [IST0101] (VirtualService default/r) Referenced host not found: "nowhere"',
        "Warning [PF0001] (VirtualService default/r) annotation sidecar.istio.io/inject is stored "
        "but not enforced by pilotfish: pilotfish acts on no such annotation here",
    ]
    vs["metadata"]["annotations"]["galley.istio.io/analyze-suppress"] = "IST0101,PF0001"
    assert [m for m in analyze([vs]) if m.type.code in ("PF0001", "IST0101")] == []
