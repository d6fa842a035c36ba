"""Istio's AuthorizationPolicy builder cases (pilot/pkg/security/authz/builder
testdata, as builder_test.go pairs inputs, outputs, trust domains and mesh
configs): every input translated and compared with istiod's filters as JSON,
field by field. Nothing is normalised: pilotfish uses Istio's filter names
and stat prefixes.

`*-extended-*` outputs are byte-identical copies istiod's test reads on a
second pass; they are checked to be identical and so claimed with their case.
`http/allow-host-before-111-*` is referenced by no case of builder_test.go
(a fixture for Istio < 1.11 proxies), so it is not claimed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.json_format import MessageToDict
from tests.api.test_conformance import conformance_dir

from pilotfish.api.manifest_yaml import load_all
from pilotfish.translate.authz import (
    AuthzSettings,
    policies_for,
    translate_ext_authz_http,
    translate_ext_authz_tcp,
    translate_rbac_http,
    translate_rbac_tcp,
)

ROOT = conformance_dir() / "istio/authz"
SERVICES = {"my-custom-ext-authz.foo.svc.cluster.local": ("foo",)}
HTTPBIN = {"app": "httpbin", "version": "v1"}

GRPC_NO_NAMESPACE = {
    "name": "default",
    "envoyExtAuthzGrpc": {
        "service": "my-custom-ext-authz.foo.svc.cluster.local",
        "port": 9000,
        "failOpen": True,
        "statusOnError": "403",
    },
}
GRPC = {
    "name": "default",
    "envoyExtAuthzGrpc": {
        "service": "foo/my-custom-ext-authz.foo.svc.cluster.local",
        "port": 9000,
        "timeout": "2ms",
        "failOpen": True,
        "statusOnError": "403",
        "includeRequestBodyInCheck": {"maxRequestBytes": 4096, "allowPartialMessage": True},
    },
}
HTTP = {
    "name": "default",
    "envoyExtAuthzHttp": {
        "service": "foo/my-custom-ext-authz.foo.svc.cluster.local",
        "port": 9000,
        "timeout": "10s",
        "failOpen": True,
        "statusOnError": "403",
        "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-custom-id", "x-prefix-*", "*-suffix"],
        "includeHeadersInCheck": ["should-not-include-when-IncludeRequestHeadersInCheck-is-set"],
        "includeAdditionalHeadersInCheck": {"x-header-1": "value-1", "x-header-2": "value-2"},
        "includeRequestBodyInCheck": {
            "maxRequestBytes": 2048,
            "allowPartialMessage": True,
            "packAsBytes": True,
        },
        "headersToUpstreamOnAllow": ["Authorization", "x-prefix-*", "*-suffix"],
        "headersToDownstreamOnDeny": ["Set-cookie", "x-prefix-*", "*-suffix"],
        "headersToDownstreamOnAllow": ["Set-cookie", "x-prefix-*", "*-suffix"],
    },
}
INVALID = {
    "name": "default",
    "envoyExtAuthzHttp": {
        "service": "foo/my-custom-ext-authz",
        "port": 999999,
        "pathPrefix": "check",
        "statusOnError": "999",
    },
}

# (name, input, outputs, trust domains, extension provider or None) as in builder_test.go;
# istiod's test passes an empty trust-domain bundle unless it names one.
HTTP_CASES: list[tuple[str, str, list[str], tuple[str, ...], Any]] = [
    ("allow-empty-rule", "allow-empty-rule-in.yaml", ["allow-empty-rule-out.yaml"], (), None),
    ("allow-full-rule", "allow-full-rule-in.yaml", ["allow-full-rule-out.yaml"], (), None),
    ("allow-nil-rule", "allow-nil-rule-in.yaml", ["allow-nil-rule-out.yaml"], (), None),
    ("allow-path", "allow-path-in.yaml", ["allow-path-out.yaml"], (), None),
    ("audit-full-rule", "audit-full-rule-in.yaml", ["audit-full-rule-out.yaml"], (), None),
    (
        "custom-grpc-provider-no-namespace",
        "custom-simple-http-in.yaml",
        [
            "custom-grpc-provider-no-namespace-out1.yaml",
            "custom-grpc-provider-no-namespace-out2.yaml",
        ],
        (),
        GRPC_NO_NAMESPACE,
    ),
    (
        "custom-grpc-provider",
        "custom-simple-http-in.yaml",
        ["custom-grpc-provider-out1.yaml", "custom-grpc-provider-out2.yaml"],
        (),
        GRPC,
    ),
    (
        "custom-http-provider",
        "custom-simple-http-in.yaml",
        ["custom-http-provider-out1.yaml", "custom-http-provider-out2.yaml"],
        (),
        HTTP,
    ),
    (
        "custom-bad-multiple-providers",
        "custom-bad-multiple-providers-in.yaml",
        ["custom-bad-multiple-providers-out1.yaml", "custom-bad-multiple-providers-out2.yaml"],
        (),
        HTTP,
    ),
    (
        "custom-bad-invalid-config",
        "custom-simple-http-in.yaml",
        ["custom-bad-out.yaml"],
        (),
        INVALID,
    ),
    (
        "deny-and-allow",
        "deny-and-allow-in.yaml",
        ["deny-and-allow-out1.yaml", "deny-and-allow-out2.yaml"],
        (),
        None,
    ),
    ("deny-empty-rule", "deny-empty-rule-in.yaml", ["deny-empty-rule-out.yaml"], (), None),
    (
        "dry-run-allow-and-deny",
        "dry-run-allow-and-deny-in.yaml",
        ["dry-run-allow-and-deny-out1.yaml", "dry-run-allow-and-deny-out2.yaml"],
        (),
        None,
    ),
    ("dry-run-allow", "dry-run-allow-in.yaml", ["dry-run-allow-out.yaml"], (), None),
    ("dry-run-mix", "dry-run-mix-in.yaml", ["dry-run-mix-out.yaml"], (), None),
    ("multiple-policies", "multiple-policies-in.yaml", ["multiple-policies-out.yaml"], (), None),
    ("single-policy", "single-policy-in.yaml", ["single-policy-out.yaml"], (), None),
    (
        "trust-domain-one-alias",
        "simple-policy-td-aliases-in.yaml",
        ["simple-policy-td-aliases-out.yaml"],
        ("td1", "cluster.local"),
        None,
    ),
    (
        "trust-domain-multiple-aliases",
        "simple-policy-multiple-td-aliases-in.yaml",
        ["simple-policy-multiple-td-aliases-out.yaml"],
        ("td1", "cluster.local", "some-td"),
        None,
    ),
    (
        "trust-domain-wildcard-in-principal",
        "simple-policy-principal-with-wildcard-in.yaml",
        ["simple-policy-principal-with-wildcard-out.yaml"],
        ("td1", "foobar"),
        None,
    ),
    (
        "trust-domain-aliases-in-source-principal",
        "td-aliases-source-principal-in.yaml",
        ["td-aliases-source-principal-out.yaml"],
        ("new-td", "old-td", "some-trustdomain"),
        None,
    ),
    ("trust-domains-field", "trust-domains-in.yaml", ["trust-domains-out.yaml"], (), None),
]

TCP_CASES: list[tuple[str, str, list[str], tuple[str, ...], Any]] = [
    (
        "allow-both-http-tcp",
        "allow-both-http-tcp-in.yaml",
        ["allow-both-http-tcp-out.yaml"],
        (),
        None,
    ),
    ("allow-only-http", "allow-only-http-in.yaml", ["allow-only-http-out.yaml"], (), None),
    (
        "audit-both-http-tcp",
        "audit-both-http-tcp-in.yaml",
        ["audit-both-http-tcp-out.yaml"],
        (),
        None,
    ),
    (
        "custom-both-http-tcp",
        "custom-both-http-tcp-in.yaml",
        ["custom-both-http-tcp-out1.yaml", "custom-both-http-tcp-out2.yaml"],
        (),
        GRPC,
    ),
    ("custom-only-http", "custom-only-http-in.yaml", [], (), HTTP),
    ("deny-both-http-tcp", "deny-both-http-tcp-in.yaml", ["deny-both-http-tcp-out.yaml"], (), None),
    ("dry-run-mix", "dry-run-mix-in.yaml", ["dry-run-mix-out.yaml"], (), None),
]


def _translate(folder: str, case: tuple[str, str, list[str], tuple[str, ...], Any]) -> list[Any]:
    _, source, _, trust_domains, provider = case
    docs = [d for d in load_all((ROOT / folder / source).read_text(encoding="utf-8")) if d]
    policies = policies_for(docs, "foo", HTTPBIN)
    settings = AuthzSettings(
        trust_domains=trust_domains,
        providers=(provider,) if provider else (),
        services=SERVICES,
    )
    # istiod's builder test builds the CUSTOM filters alone when it has a mesh config.
    if folder == "http":
        build = translate_ext_authz_http if provider else translate_rbac_http
    else:
        build = translate_ext_authz_tcp if provider else translate_rbac_tcp
    return [MessageToDict(f) for f in build(policies, settings)]


def _params(folder: str, cases: list[Any]) -> list[Any]:
    return [pytest.param(folder, case, id=f"{folder}/{case[0]}") for case in cases]


@pytest.mark.parametrize(
    ("folder", "case"), _params("http", HTTP_CASES) + _params("tcp", TCP_CASES)
)
def test_istio_authz_builder_case(folder: str, case: Any) -> None:
    if not ROOT.is_dir():
        pytest.fail(f"Istio's authz builder cases not found under {ROOT}")
    got = _translate(folder, case)
    wants = [yaml.safe_load((ROOT / folder / name).read_text()) for name in case[2]]
    assert len(got) == len(wants), [g.get("name") for g in got]
    for one, want in zip(got, wants, strict=True):
        assert one == want
    for name in case[2]:
        extended = ROOT / folder / f"extended-{name}"
        if extended.exists():
            assert extended.read_text() == (ROOT / folder / name).read_text()


def test_every_output_file_is_claimed_or_explained() -> None:
    claimed = {name for cases in (HTTP_CASES, TCP_CASES) for case in cases for name in case[2]}
    claimed |= {case[1] for cases in (HTTP_CASES, TCP_CASES) for case in cases}
    explained = {"allow-host-before-111-in.yaml", "allow-host-before-111-out.yaml"}
    on_disk = {p.name.removeprefix("extended-") for p in ROOT.glob("*/*.yaml")}
    assert on_disk - claimed - explained == set()


def test_policies_for_selects_by_namespace_root_and_labels() -> None:
    def policy(ns: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        spec = {"selector": {"matchLabels": labels}} if labels else {}
        return {"metadata": {"name": name, "namespace": ns}, "spec": spec}

    chosen = policies_for(
        [
            policy("foo", "b-ns-wide"),
            policy("istio-system", "mesh-wide"),
            policy("bar", "other-ns"),
            policy("foo", "a-selected", {"app": "httpbin"}),
            policy("foo", "not-selected", {"app": "other"}),
        ],
        "foo",
        HTTPBIN,
    )
    assert [p["metadata"]["name"] for p in chosen] == ["mesh-wide", "a-selected", "b-ns-wide"]


def test_yaml_outputs_parse() -> None:
    assert ROOT.is_dir(), f"missing {ROOT}"
    assert isinstance(yaml.safe_load(Path(ROOT / "http/single-policy-out.yaml").read_text()), dict)
