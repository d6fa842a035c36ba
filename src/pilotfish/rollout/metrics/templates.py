"""Flagger's MetricTemplate queries, rendered as Flagger renders them: a Go
text/template with `missingkey=error` whose functions are the canary's
MetricTemplateModel (pkg/apis/flagger/v1beta1/metric.go):

    {{ name }} {{ namespace }} {{ target }} {{ service }} {{ ingress }}
    {{ route }} {{ interval }} {{ variables.KEY }}

The subset of Go's template language those queries use: those actions, the
`{{-`/`-}}` whitespace trims, and `{{/* comments */}}`. Any other action (if,
range, pipelines) is an error that names it, never text left in the query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# An action, with its trim markers: "{{- " trims the text before, " -}}" the text after.
_ACTION = re.compile(r"(\{\{-(?=[ \t\r\n])|\{\{)(.*?)((?<=[ \t\r\n])-\}\}|\}\})", re.S)
_FUNCTION = re.compile(r"[A-Za-z_]\w*")
_VARIABLE = re.compile(r"variables\.(\w+)")
MODEL_FUNCTIONS = ("name", "namespace", "target", "service", "ingress", "route", "interval")


class TemplateError(ValueError):
    """Why a query cannot be rendered, in one sentence."""


def render(query: str, model: Mapping[str, str], variables: Mapping[str, str]) -> str:
    """`query` with each action replaced by its value; TemplateError when an
    action is not one of Flagger's or names a variable that is not set."""
    pieces: list[str] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(query):
        text = query[position : match.start()]
        text = text.lstrip() if trim_next else text
        pieces.append(text.rstrip() if match.group(1) == "{{-" else text)
        pieces.append(_evaluate(match.group(2).strip(), model, variables))
        position, trim_next = match.end(), match.group(3) == "-}}"
    rest = query[position:]
    if "{{" in rest:
        raise TemplateError(f"the query has an unclosed action: {rest[rest.index('{{') :][:40]}")
    pieces.append(rest.lstrip() if trim_next else rest)
    return "".join(pieces)


def _evaluate(action: str, model: Mapping[str, str], variables: Mapping[str, str]) -> str:
    if action.startswith("/*") and action.endswith("*/"):
        return ""
    variable = _VARIABLE.fullmatch(action)
    if variable is not None:
        key = variable.group(1)
        if key not in variables:
            raise TemplateError(f'{{{{ {action} }}}}: templateVariables has no "{key}"')
        return str(variables[key])
    if _FUNCTION.fullmatch(action) and action in model:
        return str(model[action])
    known = ", ".join([*MODEL_FUNCTIONS, "variables.KEY"])
    raise TemplateError(f"the query uses {{{{ {action} }}}}, which is not one of {known}")


def model(canary: Mapping[str, object], interval: str) -> dict[str, str]:
    """Flagger's MetricTemplateModel of a canary (controller toMetricModel):
    service, ingress and route default to the target's name."""
    meta = _mapping(canary.get("metadata"))
    spec = _mapping(canary.get("spec"))
    target = str(_mapping(spec.get("targetRef")).get("name") or "")

    def ref(field: str) -> str:
        return str(_mapping(spec.get(field)).get("name") or target)

    return {
        "name": str(meta.get("name") or ""),
        "namespace": str(meta.get("namespace") or "default"),
        "target": target,
        "service": ref("service"),
        "ingress": ref("ingressRef"),
        "route": ref("routeRef"),
        "interval": interval,
    }


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}
