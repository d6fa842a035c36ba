"""Reading manifests as Kubernetes and Istio read them (Go's YAML parser).

PyYAML ends a plain scalar inside a flow collection at a ':' that is followed
by ']' or ',', so `addresses: [1.2.3.4, 2001:db8::]` becomes a mapping; Go's
parser, which Istio's own tests use, keeps the IPv6 address a string. This
loader keeps such trailing colons in the scalar, and is otherwise PyYAML's
safe loader.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.tokens import ScalarToken

_FLOW_END = ",[]{}"


class ManifestLoader(yaml.SafeLoader):
    def scan_plain(self) -> Any:
        token = super().scan_plain()
        if not self.flow_level or self.peek() != ":" or self.peek(1) not in _FLOW_END:
            return token
        colons = 0
        while self.peek(colons) == ":" and self.peek(colons + 1) in ":" + _FLOW_END:
            colons += 1
        self.forward(colons)
        return ScalarToken(token.value + ":" * colons, True, token.start_mark, self.get_mark())

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Keys as JSON has them, as Kubernetes' YAML-to-JSON conversion makes
        them: `{1: a, true: b, null: c}` is {"1": ..., "true": ..., "null": ...}
        (converted one by one: Python takes 1 and True for the same key). A
        key of another type reached code that expects strings (a 500)."""
        self.flatten_mapping(node)  # `<<` merge keys, as SafeLoader does
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _key_text(self.construct_object(key_node, deep=deep))
            if not isinstance(key, Hashable):
                raise ConstructorError(None, None, "found unhashable key", key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _key_text(key: Any) -> Any:
    if isinstance(key, str) or not isinstance(key, bool | int | float | None):
        return key
    return json.dumps(key)


def load_all(text: str) -> Iterator[Any]:
    """Every document of a multi-document YAML text, as Go's parser reads them."""
    return yaml.load_all(text, Loader=ManifestLoader)
