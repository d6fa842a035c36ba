"""kubectl's JSONPath dialect, template in, text out."""

from __future__ import annotations

import pytest

from pilotfish.cli.jsonpath import JsonPathError, parse, render

LIST = {
    "kind": "List",
    "items": [
        {
            "metadata": {"name": "a", "labels": {"app": "x"}},
            "spec": {"ports": [{"port": 80}, {"port": 81}]},
        },
        {"metadata": {"name": "b"}, "spec": {"ports": [{"port": 90}]}},
    ],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{.items[*].metadata.name}", "a b"),
        (
            '{range .items[*]}{.metadata.name}{"\\t"}{.spec.ports[*].port}{"\\n"}{end}',
            "a\t80 81\nb\t90\n",
        ),
        ("{.items[0].metadata.labels}", '{"app":"x"}'),
        ('{.items[?(@.metadata.name=="b")].spec.ports[0].port}', "90"),
        ("{.items[?(@.spec.ports[0].port>85)].metadata.name}", "b"),
        ("{.items[?(@.metadata.labels)].metadata.name}", "a"),
        ("{..port}", "80 81 90"),
        ("{$.items[-1:].metadata.name}", "b"),
        ("{.items[0]['metadata']['name']}", "a"),
        ("name={.items[1].metadata.name} missing={.items[0].nope}.", "name=b missing=."),
        ("{.items[0].spec.ports}", '[{"port":80},{"port":81}]'),
    ],
)
def test_templates(template: str, expected: str) -> None:
    assert render(parse(template), LIST) == expected


@pytest.mark.parametrize(
    "template", ["{.items[*]", "{end}", "{range .items[*]}{.x}", "{.items[x]}"]
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(JsonPathError):
        parse(template)
