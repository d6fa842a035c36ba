"""What a server-side apply did, said by the server in its answer: 201 when it
created the object (as Kubernetes answers), and `Pilotfish-Apply-Result`
(created, configured, unchanged), so that `pilotfish apply` prints kubectl's
lines from one PATCH, with no GET before it."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest

from pilotfish.api.kinds import registry
from pilotfish.api.validation import compiled_schema
from pilotfish.cli import commands
from pilotfish.cli.manifests import Document
from pilotfish.client import Client
from pilotfish.controlplane.api import Request, Response
from pilotfish.controlplane.main import ControlPlane

from .cp_testkit import VS_PATH, Caller, service, virtual_service

RESULT = "Pilotfish-Apply-Result"


def result_of(response: Response) -> list[str]:
    return [value for name, value in response.headers if name == RESULT]


def test_the_answer_says_created_unchanged_or_configured(call: Caller) -> None:
    created = call.apply(virtual_service(), f"{VS_PATH}/reviews")
    assert (created.status, result_of(created)) == (201, ["created"])
    version = created.json()["metadata"]["resourceVersion"]

    again = call.apply(virtual_service(), f"{VS_PATH}/reviews")
    assert (again.status, result_of(again)) == (200, ["unchanged"])
    assert again.json()["metadata"]["resourceVersion"] == version

    changed = call.apply(virtual_service(hosts=["reviews", "r2"]), f"{VS_PATH}/reviews")
    assert (changed.status, result_of(changed)) == (200, ["configured"])
    assert changed.json()["metadata"]["resourceVersion"] != version


def test_a_dry_run_says_what_it_would_do_and_stores_nothing(call: Caller) -> None:
    dry_create = call.apply(virtual_service(), f"{VS_PATH}/reviews", "fieldManager=a&dryRun=All")
    assert (dry_create.status, result_of(dry_create)) == (201, ["created"])
    assert call("GET", f"{VS_PATH}/reviews").status == 404

    call.apply(virtual_service(), f"{VS_PATH}/reviews")
    # A dry run keeps the revision it would replace: still a change the user made.
    dry = call.apply(
        virtual_service(hosts=["r2"]), f"{VS_PATH}/reviews", "fieldManager=alice&dryRun=All"
    )
    assert (dry.status, result_of(dry)) == (200, ["configured"])
    assert call("GET", f"{VS_PATH}/reviews").json()["spec"]["hosts"] == ["reviews"]


def test_a_refused_apply_says_no_result(call: Caller) -> None:
    bad = virtual_service()
    bad["spec"]["http"] = "not a list"
    refused = call.apply(bad, f"{VS_PATH}/reviews")
    assert refused.status == 422 and result_of(refused) == []


@pytest.fixture
def requests_seen(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The method and path of every request the real server answers."""
    api = plane.server.api
    assert api is not None
    seen: list[str] = []
    handle = api.handle

    def recording(request: Request) -> Any:
        seen.append(f"{request.method} {request.path}")
        return handle(request)

    monkeypatch.setattr(api, "handle", recording)
    return seen


def test_pilotfish_apply_sends_one_patch_and_prints_kubectls_lines(
    client: Client, requests_seen: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def apply(obj: dict[str, Any]) -> str:
        doc = Document("vs.yaml", 0, copy.deepcopy(obj))
        assert commands.apply_documents(client, [doc], None)
        return capsys.readouterr().out

    vs = virtual_service()
    assert apply(vs) == "virtualservice.networking.istio.io/reviews created\n"
    assert apply(vs) == "virtualservice.networking.istio.io/reviews unchanged\n"
    assert apply(virtual_service(hosts=["r2"])) == (
        "virtualservice.networking.istio.io/reviews configured\n"
    )
    path = "/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews"
    assert requests_seen == [f"PATCH {path}"] * 3  # no GET before each PATCH


def test_a_starting_control_plane_compiles_every_schema_before_any_write(
    tmp_path: Path,
) -> None:
    """The first apply of a kind after a start does not wait for its schema's
    compilation (CEL rules: 0.2-1 s under load)."""
    compiled_schema.cache_clear()
    running = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml")
    try:
        warming = [t for t in threading.enumerate() if t.name == "schemas"]
        for thread in warming:
            thread.join(timeout=30)
        served = sum(len(kind.versions) for kind in registry())
        assert compiled_schema.cache_info().currsize == served
    finally:
        running.close()


def test_apply_analyzes_the_config_in_memory_with_the_writes_before_it(
    plane: ControlPlane, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warnings of an apply come from the mesh registry's copy of the
    config, not from listing (and decoding) the whole store again; a write
    just before is already in it."""
    vs = virtual_service()
    vs["metadata"]["namespace"] = "default"

    def no_listing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("apply's analysis listed the store")

    monkeypatch.setattr(plane.store, "list", no_listing)
    _, warnings = client.apply(vs)
    assert any('Referenced host not found: "reviews"' in w for w in warnings), warnings

    client.apply(service())
    _, warnings = client.apply(virtual_service(hosts=["reviews", "r2"]))
    assert not any('host not found: "reviews"' in w for w in warnings), warnings
