"""`pilotfish create token` and `pilotfish proxy-config secret`: workload
identity as kubectl and istioctl show it.

`proxy-config secret NAME` reads the sidecar's own /config_dump (its admin
port, from the registry), as istioctl reads Envoy's: the secrets live in the
sidecar, which made its key there; the control plane never holds them.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
import urllib.error
import urllib.request

from cryptography import x509

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.ca.workload import CertDetails
from pilotfish.cli import output
from pilotfish.cli.commands import CliError
from pilotfish.client import Client
from pilotfish.objects import Obj

SECRETS_DUMP = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
SECRET_COLUMNS = [
    "RESOURCE NAME",
    "TYPE",
    "STATUS",
    "VALID CERT",
    "SERIAL NUMBER",
    "NOT AFTER",
    "NOT BEFORE",
]
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Sub = argparse._SubParsersAction


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    create = sub.add_parser("create", help="create a resource from the command line")
    verbs = create.add_subparsers(metavar="WHAT")
    p = verbs.add_parser(
        "token", parents=[common], help="a service account token, for a sidecar's certificate"
    )
    p.add_argument("service_account", metavar="SERVICE_ACCOUNT")
    p.add_argument(
        "--duration",
        default="1h",
        help="how long the token is valid, a Go duration (at least 10m; default 1h)",
    )
    p.set_defaults(handler=create_token)


def create_token(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration_ns(args.duration) // 1_000_000_000
    except ValueError as e:
        raise CliError(f"--duration: {e}") from e
    answer = Client.from_config(args.server).create_token(
        args.namespace or "default", args.service_account, seconds
    )
    print(answer["status"]["token"])
    return 0


def proxy_config_secret(client: Client, proxy: str, format: str | None) -> int:
    """`proxy`: NAME.NAMESPACE or a node id, as proxy-config resolves it."""
    instance = find_instance(client.instances(), proxy, None)
    dump = sidecar_secrets(f"{instance['address']}:{instance['metricsPort']}")
    if format == "json":
        print(output.to_json(dump))
    elif format == "yaml":
        print(output.to_yaml(dump), end="")
    else:
        print(secret_table(dump))
    return 0


def find_instance(instances: list[Obj], wanted: str, namespace: str | None) -> Obj:
    """By `NAME.NAMESPACE`, by NAME in -n NAMESPACE (default "default"), or by
    an Istio-style node id (`sidecar~IP~NAME.NAMESPACE~...`)."""
    if wanted.count("~") == 3:
        wanted = wanted.split("~")[2]
    candidates = [(wanted, namespace or "default")]
    if "." in wanted:
        name, _, ns = wanted.rpartition(".")
        candidates.insert(0, (name, ns))
    for name, ns in candidates:
        found = [i for i in instances if i.get("name") == name and i.get("namespace") == ns]
        if found:
            return found[0]
    raise CliError(f'proxy "{wanted}" is not a registered instance (see `pilotfish proxy-status`)')


def sidecar_secrets(admin: str) -> Obj:
    """The SecretsConfigDump in the sidecar's /config_dump."""
    try:
        with _DIRECT.open(f"http://{admin}/config_dump", timeout=5) as response:
            dump = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CliError(f"cannot read the sidecar's config dump at {admin}: {e}") from e
    for config in dump.get("configs") or []:
        if config.get("@type") == SECRETS_DUMP:
            return dict(config)
    return {"@type": SECRETS_DUMP}


def secret_table(dump: Obj, now: datetime.datetime | None = None) -> str:
    rows = [SECRET_COLUMNS]
    for status, key in (("ACTIVE", "dynamicActiveSecrets"), ("WARMING", "dynamicWarmingSecrets")):
        for entry in dump.get(key) or []:
            rows.append(_secret_row(entry, status, now))
    return output.align(rows)


def _secret_row(entry: Obj, status: str, now: datetime.datetime | None) -> list[str]:
    secret = entry.get("secret") or {}
    if "validationContext" in secret:
        kind, field = "CA", secret["validationContext"].get("trustedCa") or {}
    else:
        kind, field = "Cert Chain", (secret.get("tlsCertificate") or {}).get("certificateChain")
    details = _first_cert(field or {})
    if details is None:
        return [entry.get("name", ""), kind, status, "false", "", "", ""]
    return [
        entry.get("name", ""),
        kind,
        status,
        str(details.valid(now)).lower(),
        details.serial,
        _time(details.not_after),
        _time(details.not_before),
    ]


def pem_of(field: Obj) -> bytes:
    """The PEM in a DataSource as JSON (inlineBytes is base64, as protobuf's JSON)."""
    if "inlineBytes" in field:
        return base64.b64decode(field["inlineBytes"])
    return str(field.get("inlineString", "")).encode()


def _first_cert(field: Obj) -> CertDetails | None:
    try:
        certs = x509.load_pem_x509_certificates(pem_of(field))
    except ValueError:
        print("warning: a secret's certificate cannot be read", file=sys.stderr)
        return None
    return CertDetails.of(certs[0])


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
