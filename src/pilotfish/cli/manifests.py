"""Reading resources from -f FILE|DIR|- arguments, as kubectl does."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from pilotfish.api.manifest_yaml import load_all
from pilotfish.objects import Obj

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    """A file that cannot be read or parsed; nothing from it is used."""


@dataclass(frozen=True)
class Document:
    source: str  # file name, or "-" for standard input
    index: int  # position of the document in its file, from 0
    obj: Obj


def read_documents(paths: list[str], recursive: bool = False) -> list[Document]:
    """Every object in the given files, directories (sorted) and `-` (stdin).
    A file that does not parse raises ManifestError before anything is returned,
    so a bad file never leads to half of a set being applied."""
    docs: list[Document] = []
    for path in paths:
        for source, text in _read_sources(path, recursive):
            docs.extend(_parse(source, text))
    return docs


def _read_sources(path: str, recursive: bool) -> Iterator[tuple[str, str]]:
    if path == "-":
        yield "-", sys.stdin.read()
        return
    p = Path(path)
    if p.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(f for f in p.glob(pattern) if f.suffix in MANIFEST_SUFFIXES and f.is_file())
        for f in files:
            yield str(f), _read_file(f)
    elif p.exists():
        yield str(p), _read_file(p)
    else:
        raise ManifestError(f'the path "{path}" does not exist')


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f'error reading "{path}": {e}') from e


def _parse(source: str, text: str) -> list[Document]:
    try:
        raw = [d for d in load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f'error parsing "{source}": {_one_line(e)}') from e
    docs: list[Document] = []
    for index, doc in enumerate(raw):
        if not isinstance(doc, dict):
            raise ManifestError(f'error parsing "{source}": document {index + 1} is not an object')
        items = doc.get("items") if doc.get("kind", "").endswith("List") else None
        if isinstance(items, list):
            docs.extend(Document(source, index, item) for item in items if isinstance(item, dict))
        else:
            docs.append(Document(source, index, doc))
    return docs


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
