"""Flagger's MetricTemplate query variables, rendered as Flagger renders
them: {{ name }}, {{ namespace }}, {{ target }}, {{ service }},
{{ ingress }}, {{ route }}, {{ interval }} and {{ variables.KEY }}."""

from __future__ import annotations

import re
from collections.abc import Mapping

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z][\w.-]*)\s*\}\}")


class TemplateError(ValueError):
    """A query names a variable that has no value."""


def render(query: str, model: Mapping[str, str], variables: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("variables."):
            key = name.removeprefix("variables.")
            if key not in variables:
                raise TemplateError(f'templateVariables has no "{key}"')
            return str(variables[key])
        if name not in model:
            raise TemplateError(f'unknown template variable "{name}"')
        return model[name]

    return _VARIABLE.sub(value, query)
