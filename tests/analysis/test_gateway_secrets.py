"""gateway.SecretAnalyzer: a Gateway server's credentialName is checked
against the Secrets where the gateway runs, by `pilotfish analyze` and by
the warnings `apply` returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.tls_certs import pem_pair, tls_secret

from pilotfish.analysis import analyze, warnings_for
from pilotfish.cli.manifests import read_documents

Obj = dict[str, Any]
ISTIO_TESTDATA = (
    Path(
        os.environ.get("PILOTFISH_CONFORMANCE_DIR")
        or Path(__file__).resolve().parents[3] / "shared/conformance"
    )
    / "istio/analyzers"
)


def gateway(credential: str, mode: str = "SIMPLE") -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": f"gw-{credential}", "namespace": "default"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["a.example.com"],
                    "tls": {"mode": mode, "credentialName": credential},
                }
            ],
        },
    }


def found(objects: list[Obj]) -> list[str]:
    return [str(m) for m in analyze(objects) if m.type.code in ("IST0101", "IST0161")]


def test_a_good_secret_where_the_gateway_runs_is_quiet() -> None:
    cert, key = pem_pair()
    assert found([gateway("good"), tls_secret("good", tls_crt=cert, tls_key=key)]) == []
    mutual = [gateway("m", "MUTUAL"), tls_secret("m", tls_crt=cert, tls_key=key, ca_crt=cert)]
    assert found(mutual) == []
    companion = [
        gateway("c", "MUTUAL"),
        tls_secret("c", tls_crt=cert, tls_key=key),
        tls_secret("c-cacert", ca_crt=cert),
    ]
    assert found(companion) == []


def test_a_missing_secret_is_referenced_resource_not_found() -> None:
    cert, key = pem_pair()
    elsewhere = tls_secret("cred", "other", tls_crt=cert, tls_key=key)
    assert found([gateway("cred"), elsewhere]) == [
        'Error [IST0101] (Gateway default/gw-cred) Referenced credentialName not found: "cred"'
    ]


def test_a_secret_that_cannot_serve_is_an_invalid_gateway_credential() -> None:
    cert, key = pem_pair()
    _, other_key = pem_pair()
    old_cert, old_key = pem_pair(days=1, ago=3)
    cases = [
        tls_secret("cred", tls_crt=cert, tls_key=other_key),  # key of another certificate
        tls_secret("cred", tls_crt=b"not pem", tls_key=key),
        tls_secret("cred", tls_crt=old_cert, tls_key=old_key),  # expired
        tls_secret("cred", tls_crt=cert),  # no key
    ]
    for bad in cases:
        assert found([gateway("cred"), bad]) == [
            "Error [IST0161] (Gateway default/gw-cred) The credential referenced by the Gateway "
            "gw-cred in namespace istio-system is invalid, which can cause the traffic not to "
            "work as expected."
        ]
    no_ca = [gateway("cred", "MUTUAL"), tls_secret("cred", tls_crt=cert, tls_key=key)]
    assert [m.split("]")[0] for m in found(no_ca)] == ["Error [IST0161"]


def test_apply_warns_of_it() -> None:
    stored = [tls_secret("other", tls_crt=b"x", tls_key=b"y")]

    def lookup(group: str, kind: str, namespace: str | None) -> list[Obj]:
        return [o for o in stored if o["kind"] == kind]

    warnings = warnings_for(gateway("nope"), lookup)
    assert 'Referenced credentialName not found: "nope"' in " ".join(warnings)


def test_istios_invalid_secrets_testdata() -> None:
    path = ISTIO_TESTDATA / "gateway-secrets-validation.yaml"
    objects = [d.obj for d in read_documents([str(path)])]
    found = {
        (m.type.code, m.resource.origin)
        for m in analyze(objects)
        if m.type.code in ("IST0101", "IST0161")
    }
    gateways = ("invalid-keys", "missing-keys", "invalid-cert", "expired")
    # The testdata's own comments: each of its Gateways gets one error.
    assert found == {("IST0161", f"Gateway defaultgateway-{g}") for g in gateways}
