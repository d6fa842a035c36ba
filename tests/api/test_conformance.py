"""Istio's own validation cases and Bookinfo files, as Istio's tests use them.

Every document of `*-valid.yaml` must be accepted, every document of
`*-invalid.yaml` rejected with Istio's text (its `_err` line) in our message,
and every Bookinfo networking file accepted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pilotfish.api.manifest_yaml import load_all
from pilotfish.api.validation import validate

SCHEMAS = Path(__file__).resolve().parents[2] / "src/pilotfish/api/schemas"


def conformance_dir() -> Path:
    override = os.environ.get("PILOTFISH_CONFORMANCE_DIR")
    return (
        Path(override) if override else Path(__file__).resolve().parents[3] / "shared/conformance"
    )


def _cases(folder: str, pattern: str) -> list[Any]:
    root = conformance_dir() / folder
    if not root.is_dir():
        return [pytest.param(None, None, None, id=f"missing-{folder}")]
    cases = []
    for path in sorted(root.glob(pattern)):
        for index, doc in enumerate(load_all(path.read_text(encoding="utf-8"))):
            if doc:
                name = (doc.get("metadata") or {}).get("name", index)
                cases.append(pytest.param(path, index, doc, id=f"{path.name}:{index}:{name}"))
    return cases


def _require(path: Path | None) -> None:
    if path is None:
        pytest.fail(
            f"conformance files not found under {conformance_dir()}; "
            "set PILOTFISH_CONFORMANCE_DIR to the shared/conformance folder"
        )


@pytest.mark.parametrize(("path", "index", "doc"), _cases("istio/validation", "*.yaml"))
def test_istio_validation_case(path: Path | None, index: int, doc: dict[str, Any]) -> None:
    _require(path)
    assert path is not None
    expected = doc.pop("_err", None)
    messages = [str(e) for e in validate(doc)]
    if path.name.endswith("-valid.yaml"):
        assert messages == [], f"valid document rejected: {messages}"
        return
    assert messages, "invalid document accepted"
    if expected is not None:
        assert any(expected in m for m in messages), f"{expected!r} not in {messages}"


@pytest.mark.parametrize(("path", "index", "doc"), _cases("istio/bookinfo-networking", "*.yaml"))
def test_bookinfo_file_accepted(path: Path | None, index: int, doc: dict[str, Any]) -> None:
    _require(path)
    assert [str(e) for e in validate(doc)] == []


@pytest.mark.parametrize(
    ("packaged", "shared"),
    [
        ("istio-crd-all.gen.yaml", "istio/crd-all.gen.yaml"),
        ("flagger-crd.yaml", "flagger/crd.yaml"),
    ],
)
def test_packaged_crds_are_the_upstream_files(packaged: str, shared: str) -> None:
    source = conformance_dir() / shared
    if not source.is_file():
        pytest.fail(f"{source} not found; set PILOTFISH_CONFORMANCE_DIR")
    assert (SCHEMAS / packaged).read_bytes() == source.read_bytes()
