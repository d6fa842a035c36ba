"""The packaged CRDs, parsed once and kept as JSON in the user's cache: the
same kinds and schemas as parsing the YAML, and a cache that is missing,
damaged or unwritable only costs the parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pilotfish.api import kinds
from pilotfish.api.kinds import SCHEMA_FILES, KindRegistry, _crds, _loader, kind_from_crd


def _parsed() -> list[dict]:
    folder = Path(kinds.__file__).parent / "schemas"
    return [
        doc
        for name in SCHEMA_FILES
        for doc in yaml.load_all((folder / name).read_text(), Loader=_loader())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "pilotfish"


def test_the_cache_holds_exactly_what_parsing_gives(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _crds()
    assert len(list(cache.glob("crds-*.json"))) == 1

    def no_parsing(*_: object, **__: object) -> None:
        raise AssertionError("the YAML was parsed again")

    monkeypatch.setattr(kinds.yaml, "load_all", no_parsing)
    again = _crds()  # from the cache
    monkeypatch.undo()
    assert first == again == _parsed()
    registry = KindRegistry([kind_from_crd(c) for c in again])
    vs = registry.resolve("vs")
    assert vs.schemas["v1"]["properties"]["spec"]["properties"]["http"]
    assert cache.stat().st_mode & 0o777 == 0o700


def test_a_damaged_cache_is_parsed_again_and_rewritten(cache: Path) -> None:
    _crds()
    (written,) = cache.glob("crds-*.json")
    written.write_text('[{"kind": "Custom')
    assert _crds() == _parsed()
    assert _crds() == _parsed()  # rewritten whole


def test_an_unwritable_cache_only_costs_the_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert _crds() == _parsed()
