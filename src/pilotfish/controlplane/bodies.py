"""Request bodies parsed within stated limits, so no body costs more than it weighs.

A body is at most MAX_BODY bytes (Kubernetes' limit). Parsed, it may nest at
most MAX_DEPTH mappings and sequences deep (Python's recursion, in the
parser, the validator, the store's field merging and `pilotfish get`'s YAML
printer, would fail near 1,000) and hold at most MAX_VALUES values and
MAX_TEXT bytes of text once YAML aliases are expanded: a few hundred bytes of
nested aliases (a "billion laughs") are refused while composing, before
anything is expanded. Every refusal is a 400 naming the limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import Node, ScalarNode

from pilotfish.api.errors import BadRequest, RequestEntityTooLarge
from pilotfish.api.manifest_yaml import ManifestLoader

MAX_BODY = 3 * 1024 * 1024  # Kubernetes' limit on a request body
MAX_DEPTH = 100  # nested mappings and sequences
MAX_VALUES = 500_000  # mappings, sequences, keys and scalars, aliases expanded
MAX_TEXT = MAX_BODY  # bytes of keys and scalars, aliases expanded


def too_large() -> RequestEntityTooLarge:
    """Kubernetes' 413 wording (apiserver's limitedReadBody)."""
    return RequestEntityTooLarge(f"Request entity too large: limit is {MAX_BODY}")


def parse(body: bytes, *, as_yaml: bool) -> Any:
    """The body as plain JSON data; BadRequest if it is malformed or over a limit."""
    if len(body) > MAX_BODY:
        raise too_large()
    name = "YAML" if as_yaml else "JSON"
    try:
        text = body.decode("utf-8")
        if as_yaml:
            return yaml.load(text, Loader=BoundedLoader)
        parsed = json.loads(text)
    except RecursionError:
        raise _refused(name, f"exceeded max depth of {MAX_DEPTH}") from None
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise BadRequest(f"the request body is not valid {name}: {e}") from e
    measure(parsed)
    return parsed


def measure(value: Any) -> None:
    """Refuse parsed JSON data over MAX_DEPTH, MAX_VALUES or MAX_TEXT, without recursion."""
    values = text = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        values += 1
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise _refused("JSON", f"exceeded max depth of {MAX_DEPTH}")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
            if isinstance(item, dict):
                values += len(item)
                text += sum(len(key) for key in item)
        elif isinstance(item, str):
            text += len(item)
        if values > MAX_VALUES or text > MAX_TEXT:
            raise _refused("JSON", _size_message(aliased=False))


def _refused(name: str, why: str) -> BadRequest:
    return BadRequest(f"the request body is not valid {name}: {name.lower()}: {why}")


def _size_message(*, aliased: bool) -> str:
    what = "document contains excessive aliasing: " if aliased else ""
    return (
        f"{what}more than {MAX_VALUES} values or {MAX_TEXT} bytes of text "
        f"{'once aliases are expanded' if aliased else 'in the document'}"
    )


class BoundedLoader(ManifestLoader):
    """The CLI's YAML reading, with timestamps left as strings (so every body is
    plain JSON data: a datetime could not be stored), that counts what each
    node would expand to while composing and stops at the first limit passed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # containers open around the node being composed
        self._values = 0  # of the whole document, aliases expanded
        self._text = 0
        self._aliased = False
        self._frames: list[_Size] = []  # the children so far of each node being composed
        self._sizes: dict[int, _Size] = {}  # anchored node -> its expanded size

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            return self._compose_alias(parent, index)
        container = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if container and self._depth >= MAX_DEPTH:
            raise _refused("YAML", f"exceeded max depth of {MAX_DEPTH}")
        anchor = self._anchor()
        self._depth += container
        self._frames.append(_Size())
        node = self._compose(parent, index)
        children = self._frames.pop()
        self._depth -= container
        own_text = len(node.value) if isinstance(node, ScalarNode) else 0
        size = _Size(children.values + 1, children.text + own_text, children.height + container)
        if anchor is not None:
            self._sizes[id(node)] = size
        self._count(_Size(1, own_text), size)
        return node

    def _compose_alias(self, parent: Node | None, index: Any) -> Node:
        anchor = self._anchor()
        node = self._compose(parent, index)
        size = self._sizes.get(id(node))
        if size is None:  # an alias inside its own anchor: a cycle
            raise _refused("YAML", f"anchor {anchor!r} value contains itself")
        if self._depth + size.height > MAX_DEPTH:
            raise _refused("YAML", f"exceeded max depth of {MAX_DEPTH}")
        self._aliased = True
        self._count(size, size)
        return node

    def _anchor(self) -> str | None:
        anchor: str | None = self.peek_event().anchor  # type: ignore[no-untyped-call]
        return anchor

    def _compose(self, parent: Node | None, index: Any) -> Node:
        node = super().compose_node(parent, index)
        assert node is not None  # only a document's end composes to None
        return node

    def _count(self, new: _Size, size: _Size) -> None:
        """`new`: what this node adds to the document; `size`: to its parent."""
        self._values += new.values
        self._text += new.text
        if self._frames:
            self._frames[-1].add(size)
        if self._values > MAX_VALUES or self._text > MAX_TEXT:
            raise _refused("YAML", _size_message(aliased=self._aliased))


@dataclass
class _Size:
    """A node as it would be expanded: values, bytes of text, containers deep."""

    values: int = 0
    text: int = 0
    height: int = 0

    def add(self, child: _Size) -> None:
        self.values += child.values
        self.text += child.text
        self.height = max(self.height, child.height)


BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
