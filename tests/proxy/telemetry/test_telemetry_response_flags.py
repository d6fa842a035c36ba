"""Envoy's response flags: one table, Envoy's order, Envoy's names."""

from __future__ import annotations

import pytest

from pilotfish.proxy import response_flags as rf


def test_flags_join_in_envoys_order_without_duplicates() -> None:
    flags = rf.add("", rf.URX)
    flags = rf.add(flags, rf.UF)
    flags = rf.add(flags, rf.UF)
    assert flags == "UF,URX"
    assert rf.add("-", rf.DC) == "DC"


def test_label_is_dash_when_there_are_none() -> None:
    assert rf.label("") == "-"
    assert rf.label("UT") == "UT"


def test_long_names_are_envoys() -> None:
    assert rf.long_names("UH,UO") == "NoHealthyUpstream,UpstreamOverflow"
    assert rf.long_names("") == "-"
    assert rf.BY_SHORT["UMSDR"].long == "UpstreamMaxStreamDurationReached"
    assert rf.BY_SHORT["NC"].long == "NoClusterFound"


def test_unknown_flags_are_refused() -> None:
    with pytest.raises(rf.UnknownFlagError):
        rf.add("", "XX")
    with pytest.raises(rf.UnknownFlagError):
        rf.long_names("UF,XX")


def test_every_short_code_is_unique() -> None:
    assert len(rf.BY_SHORT) == len(rf.FLAGS) == 28
