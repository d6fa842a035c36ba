"""Label selectors in Kubernetes' syntax: what matches, and what is refused."""

from __future__ import annotations

import pytest

from pilotfish.api.errors import BadRequest
from pilotfish.store.selectors import parse_selector

LABELS = {"app": "reviews", "version": "v2", "tier": "", "weight": "30", "example.com/team": "mesh"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=reviews", True),
        ("app==reviews", True),
        ("app=ratings", False),
        ("app!=ratings", True),
        ("missing!=x", True),
        ("app=reviews,version=v1", False),
        ("version in (v1, v2)", True),
        ("version in (v1)", False),
        ("version notin (v1,v3)", True),
        ("missing notin (v1)", True),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("tier=", True),
        ("tier in (,x)", True),
        ("weight>20", True),
        ("weight<20", False),
        ("app>1", False),
        ("example.com/team=mesh", True),
        ("  app = reviews ,  version in (v2)  ", True),
    ],
)
def test_selector_matches(selector: str, matches: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    ("selector", "why"),
    [
        ("app in reviews", "found 'reviews', expected: '('"),
        ("app in (a,b", "found end of string, expected: ')'"),
        ("app=reviews,", "found end of string, expected: a label key"),
        (",app", "found ',', expected: a label key"),
        ("app=a b", "found 'b', expected: ','"),
        ("app=(x)", "found '(', expected: a label value"),
        ("-bad=x", "found '-bad', expected: a label key"),
        ("app in ()", "the set of values of 'app' is empty"),
        ("weight>high", "must be an integer"),
        ("app=" + "x" * 64, "expected: a label value"),
        ("!", "found end of string, expected: a label key"),
    ],
)
def test_malformed_selectors_are_bad_requests(selector: str, why: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_selector(selector)
    assert raised.value.message.startswith(f'unable to parse label selector "{selector}": ')
    assert why in raised.value.message
