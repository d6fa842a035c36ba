"""Reading manifests as Kubernetes and Istio read them (Go's YAML parser).

PyYAML ends a plain scalar inside a flow collection at a ':' that is followed
by ']' or ',', so `addresses: [1.2.3.4, 2001:db8::]` becomes a mapping; Go's
parser, which Istio's own tests use, keeps the IPv6 address a string. This
loader keeps such trailing colons in the scalar, and is otherwise PyYAML's
safe loader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
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


def load_all(text: str) -> Iterator[Any]:
    """Every document of a multi-document YAML text, as Go's parser reads them."""
    return yaml.load_all(text, Loader=ManifestLoader)
