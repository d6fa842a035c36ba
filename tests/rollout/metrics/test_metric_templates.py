"""MetricTemplate queries rendered as Flagger renders them (Go text/template
with Flagger's functions and missingkey=error)."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.rollout.metrics.templates import TemplateError, model, render

MODEL = {
    "name": "podinfo",
    "namespace": "default",
    "target": "myapp",
    "service": "myapp",
    "ingress": "myapp",
    "route": "myapp",
    "interval": "1m",
}

# Flagger's own Istio request-success-rate query (pkg/metrics/observers/istio.go).
ISTIO_SUCCESS_RATE = """
    sum(
        rate(
            istio_requests_total{
                reporter="destination",
                destination_workload_namespace="{{ namespace }}",
                destination_workload=~"{{ target }}",
                response_code!~"5.*"
            }[{{ interval }}]
        )
    )"""


def test_flagger_render_test_without_variables() -> None:
    query = 'sum(envoy_cluster_upstream_rq{envoy_cluster_name=~"{{ namespace }}_{{ target }}"})'
    assert (
        render(query, MODEL, {})
        == 'sum(envoy_cluster_upstream_rq{envoy_cluster_name=~"default_myapp"})'
    )


def test_flagger_render_test_with_variables() -> None:
    query = 'delta(max by (consumer_group) (kafka_consumer_current_offset{cluster="{{ variables.cluster }}", consumer_group="{{ variables.consumer_group }}"}[{{ interval }}]))'
    variables = {"cluster": "dev", "consumer_group": "my_consumer"}
    assert render(query, MODEL, variables) == (
        'delta(max by (consumer_group) (kafka_consumer_current_offset{cluster="dev", consumer_group="my_consumer"}[1m]))'
    )


def test_flagger_render_test_missing_variable_key() -> None:
    query = '{cluster="{{ variables.cluster }}", group="{{ variables.consumer_group }}"}'
    with pytest.raises(TemplateError, match='templateVariables has no "cluster"'):
        render(query, MODEL, {"invalid": "dev", "consumer_group": "my_consumer"})


def test_every_model_function_and_spacing() -> None:
    query = "{{name}}|{{ namespace }}|{{  target  }}|{{ service }}|{{ ingress }}|{{ route }}|{{ interval }}"
    assert render(query, MODEL, {}) == "podinfo|default|myapp|myapp|myapp|myapp|1m"


def test_trim_markers_and_comments_as_go_has_them() -> None:
    assert render("a  {{- target }}  b", MODEL, {}) == "amyapp  b"
    assert render("a  {{ target -}}  \n b", MODEL, {}) == "a  myappb"
    assert render("x{{/* why */}}y {{- /* trimmed */ -}} z", MODEL, {}) == "xyz"


def test_the_builtin_istio_query_renders() -> None:
    rendered = render(ISTIO_SUCCESS_RATE, MODEL, {})
    assert 'destination_workload_namespace="default"' in rendered
    assert 'destination_workload=~"myapp"' in rendered
    assert "}[1m]" in rendered


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("{{ nope }}", r"\{\{ nope \}\}, which is not one of name, namespace"),
        ("{{ .Name }}", r"\{\{ .Name \}\}, which is not one of"),
        ("{{ if true }}x{{ end }}", r"\{\{ if true \}\}, which is not one of"),
        ("{{ variables }}", r"\{\{ variables \}\}, which is not one of"),
        ("{{ target | printf }}", "which is not one of"),
        ("rate(x[{{ interval ]", "unclosed action"),
    ],
)
def test_what_is_not_flaggers_is_an_error_not_text(query: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(query, MODEL, {})


def test_text_without_actions_is_left_alone() -> None:
    assert render('sum(x{a="}}"}) > 0', MODEL, {}) == 'sum(x{a="}}"}) > 0'


def test_the_model_of_a_canary_defaults_to_its_target() -> None:
    canary: dict[str, Any] = {
        "metadata": {"name": "podinfo"},
        "spec": {"targetRef": {"kind": "Deployment", "name": "podinfo-app"}},
    }
    assert model(canary, "30s") == {
        "name": "podinfo",
        "namespace": "default",
        "target": "podinfo-app",
        "service": "podinfo-app",
        "ingress": "podinfo-app",
        "route": "podinfo-app",
        "interval": "30s",
    }
    canary["metadata"]["namespace"] = "test"
    canary["spec"].update(
        service={"name": "podinfo-svc", "port": 9898},
        ingressRef={"name": "podinfo-ing"},
        routeRef={"name": "podinfo-route"},
    )
    about = model(canary, "1m")
    assert (about["namespace"], about["service"], about["ingress"], about["route"]) == (
        "test",
        "podinfo-svc",
        "podinfo-ing",
        "podinfo-route",
    )
