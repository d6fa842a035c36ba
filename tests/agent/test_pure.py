"""The agent's pure parts: the rollout arithmetic, spec resolution and the
content hash, probe counting, and the sidecar bootstrap the proxy must accept."""

from __future__ import annotations

import base64
import random
import socket

import pytest

import pilotfish.proxy.process  # noqa: F401  (what the proxy process loads: every payload type)
from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, node_id, sidecar_bootstrap
from pilotfish.agent.plan import Strategy, View, plan, scaled
from pilotfish.agent.probes import ProbeState
from pilotfish.agent.spec import SpecError, config_data, expand, resolve
from pilotfish.api.workloads import template_hash
from pilotfish.proxy.bootstrap import parse_bootstrap


def views(template: str, *ready: bool) -> list[View]:
    return [View(f"{template}-{i}", template, r, float(i)) for i, r in enumerate(ready)]


def test_scale_up_and_down_prefers_stopping_unready_then_youngest() -> None:
    assert plan(3, "a", views("a", True), Strategy()).start == 2
    down = plan(1, "a", views("a", True, False, True), Strategy())
    assert down.start == 0 and down.stop == ["a-1", "a-2"]


def test_rolling_update_with_max_unavailable_zero_surges_first() -> None:
    strategy = Strategy(max_surge=1, max_unavailable=0)
    first = plan(2, "b", views("a", True, True), strategy)
    assert first.start == 1 and first.stop == []
    # the new one is not ready yet: nothing old may go
    waiting = plan(2, "b", [*views("a", True, True), View("b-0", "b", False, 5.0)], strategy)
    assert waiting.start == 0 and waiting.stop == []
    # ready: the oldest old instance goes, and one more new may start
    moving = plan(2, "b", [*views("a", True, True), View("b-0", "b", True, 5.0)], strategy)
    assert moving.stop == ["a-0"] and moving.start == 0
    after = plan(2, "b", [View("a-1", "a", True, 1.0), View("b-0", "b", True, 5.0)], strategy)
    assert after.start == 1 and after.stop == []


def test_rolling_update_stops_unready_old_instances_at_once() -> None:
    out = plan(2, "b", views("a", False, True), Strategy(max_surge=0, max_unavailable=1))
    assert "a-0" in out.stop


def test_recreate_stops_all_old_then_waits_for_them_to_be_gone() -> None:
    strategy = Strategy(recreate=True)
    assert plan(2, "b", views("a", True, True), strategy).stop == ["a-0", "a-1"]
    assert plan(2, "b", [], strategy, stopping=2).start == 0
    assert plan(2, "b", [], strategy, stopping=0).start == 2


@pytest.mark.parametrize(
    ("value", "up", "expected"),
    [("25%", True, 1), ("25%", False, 0), (2, True, 2), ("50%", False, 2)],
)
def test_percentages_round_as_kubernetes(value: int | str, up: bool, expected: int) -> None:
    assert scaled(value, 4 if value == "50%" else 3, round_up=up) == expected


def test_expand_follows_kubernetes() -> None:
    env = {"PORT": "8080"}
    assert (
        expand("--port=$(PORT) $(MISSING) $$(PORT) $$", env) == "--port=8080 $(MISSING) $(PORT) $"
    )


SPEC = {
    "labels": {"app": "x"},
    "command": ["python3", "app.py", "$(PORT)"],
    "args": ["--greeting=$(GREETING)"],
    "env": [
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
        {
            "name": "OPT",
            "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}},
        },
    ],
    "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
    "volumes": [
        {
            "name": "content",
            "configMap": {"name": "cfg", "items": [{"key": "index.html", "path": "index.html"}]},
        }
    ],
    "volumeMounts": [{"name": "content", "mountPath": "content"}],
}
OBJECTS = [
    {
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"greeting": "hello", "index.html": "<h1>hi</h1>"},
    },
    {
        "kind": "Secret",
        "metadata": {"name": "sec"},
        "data": {"token": base64.b64encode(b"s3cret").decode()},
    },
]


def test_resolve_env_argv_and_files() -> None:
    resolved = resolve(SPEC, {"PORT": "1234"}, config_data(OBJECTS))
    assert resolved.argv == ["python3", "app.py", "1234", "--greeting=hello"]
    assert resolved.env["TOKEN"] == "s3cret" and resolved.env["CFG_greeting"] == "hello"
    assert "OPT" not in resolved.env
    assert resolved.files == {"content/index.html": b"<h1>hi</h1>"}


def test_a_missing_required_reference_names_it() -> None:
    with pytest.raises(SpecError, match='Secret "sec" not found'):
        resolve(SPEC, {}, config_data(OBJECTS[:1]))


def test_template_hash_follows_spec_and_referenced_data_but_not_replicas() -> None:
    configs = config_data(OBJECTS)
    base = template_hash(SPEC, configs)
    assert template_hash({**SPEC, "replicas": 7}, configs) == base
    changed = config_data(
        [{**OBJECTS[0], "data": {"greeting": "bye", "index.html": ""}}, OBJECTS[1]]
    )
    assert template_hash(SPEC, changed) != base
    unrelated = config_data(
        [*OBJECTS, {"kind": "ConfigMap", "metadata": {"name": "other"}, "data": {"a": "b"}}]
    )
    assert template_hash(SPEC, unrelated) == base
    assert template_hash({**SPEC, "command": ["python3"]}, configs) != base


def test_probe_thresholds() -> None:
    state = ProbeState(
        {"periodSeconds": 2, "failureThreshold": 2, "initialDelaySeconds": 1},
        passing=False,
        started=0.0,
    )
    assert not state.due(0.5) and state.due(1.0)
    assert state.record(True, "", 1.0) and state.passing
    assert not state.due(2.0) and state.due(3.0)
    assert not state.record(False, "boom", 3.0) and state.passing  # one failure is not enough
    assert state.record(False, "boom", 5.0) and not state.passing and state.last_error == "boom"


def test_sidecar_bootstrap_is_accepted_by_the_proxy() -> None:
    who = SidecarIdentity(
        "reviews-v2-abc",
        "default",
        "reviews-v2",
        {"app": "reviews", "version": "v2"},
        "bookinfo-reviews",
        "reviews-v2",
    )
    config = sidecar_bootstrap(
        who, admin_port=15000, outbound_port=15001, xds=XdsServer("127.0.0.1", 15010)
    )
    bootstrap = parse_bootstrap(config)
    assert node_id(who) == "sidecar~127.0.0.1~reviews-v2-abc.default~default.svc.cluster.local"
    assert bootstrap.node.id == node_id(who)
    metadata = bootstrap.node.metadata
    assert metadata["WORKLOAD_NAME"] == "reviews-v2" and metadata["LABELS"]["version"] == "v2"
    assert (
        metadata["SERVICE_ACCOUNT"] == "bookinfo-reviews" and metadata["OUTBOUND_PORT"] == "15001"
    )
    assert bootstrap.static_resources.clusters[0].name == "xds-grpc"
    assert "UPSTREAMS" not in metadata


def test_a_workloads_upstreams_reach_the_control_plane_in_the_node_metadata() -> None:
    """What the translation reads (translate/upstreams.py), as the xDS server parses it."""
    from pilotfish.translate.upstreams import Upstream, declared_upstreams
    from pilotfish.xds.node import proxy_from_node

    who = SidecarIdentity("ratings-v1-abc", "default", "ratings-v1", {"app": "ratings"}, "x", "r")
    upstreams = [{"service": "redis", "port": 6379, "localPort": 16379}]
    config = sidecar_bootstrap(
        who,
        admin_port=15000,
        outbound_port=15001,
        xds=XdsServer("127.0.0.1", 15010),
        upstreams=upstreams,
    )
    proxy = proxy_from_node(parse_bootstrap(config).node)
    assert declared_upstreams(proxy) == [Upstream("redis", 6379, 16379, "127.0.0.1")]


def _three_free_ports_holding_the_first() -> socket.socket:
    """A bound socket on port P where P+1 and P+2 were free a moment ago,
    from outside the kernel's ephemeral range, so no bind(0) elsewhere in a
    busy test run takes them in between."""
    from pilotfish.agent.ports import non_ephemeral_range

    span = non_ephemeral_range()
    for _ in range(50):
        base = random.randrange(span.start, span.stop - 3)
        sockets = [socket.socket() for _ in range(3)]
        try:
            for i, s in enumerate(sockets):
                s.bind(("127.0.0.1", base + i))
        except OSError:
            for s in sockets:
                s.close()
            continue
        for s in sockets[1:]:
            s.close()
        return sockets[0]
    raise AssertionError("no three free ports in a row")


def test_ports_come_from_outside_the_ephemeral_range() -> None:
    from pilotfish.agent.ports import PortAllocator, non_ephemeral_range

    assert non_ephemeral_range("32768\t60999\n") == range(20000, 32768)
    assert non_ephemeral_range("1024 40000") == range(40001, 65536)
    assert non_ephemeral_range("garbage") == range(20000, 32768)
    with _three_free_ports_holding_the_first() as held:
        taken = held.getsockname()[1]
        allocator = PortAllocator(ports=range(taken, taken + 3))
        given = {allocator.allocate(), allocator.allocate()}
        assert given == {taken + 1, taken + 2}  # the held port is skipped
        with pytest.raises(OSError, match="no free port"):
            allocator.allocate()
    allocator.release(taken + 1)
    assert allocator.allocate() in (taken, taken + 1)


def test_a_proxyless_app_is_told_to_read_its_bootstraps_call_creds(tmp_path: object) -> None:
    """gRPC reads the bootstrap's `call_creds` (its service account token for
    xDS off the control plane's host) only with the experiment's switch on;
    a sidecar's app gets its proxy instead."""
    from pathlib import Path

    from pilotfish.agent.instance import Instance, Ports
    from pilotfish.agent.node import instance_env

    ports = Ports(app={"grpc": 1}, inbound={"grpc": 2}, outbound=3, admin=4)
    common = dict(name="echo-0", namespace="default", workload="echo", template="t", spec={},
                  directory=Path(str(tmp_path)), ports=ports, xds=XdsServer("127.0.0.1", 1),
                  client=None)  # fmt: skip
    proxyless = instance_env(Instance(**common, proxyless=True), {})  # type: ignore[arg-type]
    assert proxyless["GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"] == "true"
    assert proxyless["GRPC_XDS_BOOTSTRAP"].endswith("bootstrap.json")
    sidecar = instance_env(Instance(**common), {})  # type: ignore[arg-type]
    assert "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS" not in sidecar
