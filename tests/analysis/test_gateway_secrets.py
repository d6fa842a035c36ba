"""gateway.SecretAnalyzer: a Gateway server's credentialName is checked
against the Secrets where the gateway runs, by `pilotfish analyze` and by
the warnings `apply` returns."""

from __future__ import annotations

import base64
import datetime
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def pair(ago_days: float = 0.0) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=ago_days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def secret(name: str, namespace: str = "istio-system", **data: bytes) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()},
    }


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
    cert, key = pair()
    assert found([gateway("good"), secret("good", tls_crt=cert, tls_key=key)]) == []
    mutual = [gateway("m", "MUTUAL"), secret("m", tls_crt=cert, tls_key=key, ca_crt=cert)]
    assert found(mutual) == []
    companion = [
        gateway("c", "MUTUAL"),
        secret("c", tls_crt=cert, tls_key=key),
        secret("c-cacert", ca_crt=cert),
    ]
    assert found(companion) == []


def test_a_missing_secret_is_referenced_resource_not_found() -> None:
    cert, key = pair()
    elsewhere = secret("cred", "other", tls_crt=cert, tls_key=key)
    assert found([gateway("cred"), elsewhere]) == [
        'Error [IST0101] (Gateway default/gw-cred) Referenced credentialName not found: "cred"'
    ]


def test_a_secret_that_cannot_serve_is_an_invalid_gateway_credential() -> None:
    cert, key = pair()
    _, other_key = pair()
    old_cert, old_key = pair(ago_days=3)
    cases = [
        secret("cred", tls_crt=cert, tls_key=other_key),  # key of another certificate
        secret("cred", tls_crt=b"not pem", tls_key=key),
        secret("cred", tls_crt=old_cert, tls_key=old_key),  # expired
        secret("cred", tls_crt=cert),  # no key
    ]
    for bad in cases:
        assert found([gateway("cred"), bad]) == [
            "Error [IST0161] (Gateway default/gw-cred) The credential referenced by the Gateway "
            "gw-cred in namespace istio-system is invalid, which can cause the traffic not to "
            "work as expected."
        ]
    no_ca = [gateway("cred", "MUTUAL"), secret("cred", tls_crt=cert, tls_key=key)]
    assert [m.split("]")[0] for m in found(no_ca)] == ["Error [IST0161"]


def test_apply_warns_of_it() -> None:
    stored = [secret("other", tls_crt=b"x", tls_key=b"y")]

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
