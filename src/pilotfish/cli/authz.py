"""`pilotfish authz check WORKLOAD`, as `istioctl x authz check`: the
AuthorizationPolicies that apply to a workload's sidecars, their action and
rule count, and with `-o yaml` the RBAC and ext_authz filters the control
plane translates them into, in the order the sidecar runs them.

The policies are read from the control plane and translated here by the same
pure functions the control plane uses (translate/authz.py), with the mesh
config (ConfigMap istio-system/istio) for trust domains and providers (a
control plane started with --trust-domain uses that domain instead, which the
API does not expose: `proxy-config` shows what a sidecar really got).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping

from google.protobuf.json_format import MessageToDict

from pilotfish.cli import output
from pilotfish.cli.commands import resolve
from pilotfish.client import Client
from pilotfish.model import ROOT_NAMESPACE, build_snapshot
from pilotfish.model.snapshot import MESH_CONFIG
from pilotfish.objects import Obj
from pilotfish.translate.authz import (
    action_of,
    authz_settings,
    policies_for,
    selects,
    translate_authz_http,
)
from pilotfish.translate.jwt import selects as authn_selects

Sub = argparse._SubParsersAction
COLUMNS = ["ACTION", "AuthorizationPolicy", "RULES"]


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    authz = sub.add_parser("authz", help="authorization: which policies apply to a workload")
    verbs = authz.add_subparsers(metavar="WHAT")
    p = verbs.add_parser(
        "check",
        parents=[common],
        help="the AuthorizationPolicies applying to a workload and their translated rules",
    )
    p.add_argument("workload", metavar="WORKLOAD", help="a Workload's name")
    p.add_argument(
        "-o", "--output", choices=["table", "yaml"], default="table",
        help="yaml: also the RBAC and ext_authz filters, as the sidecar gets them",
    )  # fmt: skip
    p.set_defaults(handler=check)


def check(args: argparse.Namespace) -> int:
    client = Client.from_config(args.server)
    namespace = args.namespace or "default"
    workload = client.get(resolve("Workload"), args.workload, namespace)
    labels = workload_labels(workload)
    policies = policies_for(_all_policies(client, namespace), namespace, labels)
    print(output.align(policy_rows(policies)))
    if args.output == "yaml":
        snapshot = build_snapshot([*_mesh_config(client), *_services(client)])
        # The control plane's trust domain is its --trust-domain, which the API
        # does not show; the mesh config's is what it uses without the flag.
        domain = snapshot.mesh_config.get("trustDomain")
        if domain:
            snapshot = dataclasses.replace(snapshot, trust_domain=str(domain))
        filters = translate_authz_http(policies, authz_settings(snapshot))
        print(output.to_yaml([json.loads(json.dumps(MessageToDict(f))) for f in filters]))
    return 0


def workload_labels(workload: Obj) -> Mapping[str, str]:
    """The labels its instances (and so its sidecars) carry."""
    spec = workload.get("spec") or {}
    labels = spec.get("labels") or (workload.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def policy_rows(policies: list[Obj]) -> list[list[str]]:
    """istioctl's columns; a policy with no rules matches nothing."""
    rows = [COLUMNS]
    for policy in policies:
        meta = policy.get("metadata") or {}
        rules = (policy.get("spec") or {}).get("rules") or []
        dry = (meta.get("annotations") or {}).get("istio.io/dry-run") == "true"
        action = action_of(policy) + (" (dry-run)" if dry else "")
        rows.append([action, f"{meta.get('name')}.{meta.get('namespace')}", str(len(rules))])
    return rows


def _all_policies(client: Client, namespace: str) -> list[Obj]:
    kind = resolve("AuthorizationPolicy")
    found: list[Obj] = []
    for ns in dict.fromkeys((ROOT_NAMESPACE, namespace)):
        found += client.list(kind, ns).get("items", [])
    return found


def _mesh_config(client: Client) -> list[Obj]:
    namespace, name = MESH_CONFIG
    items = client.list(resolve("ConfigMap"), namespace).get("items", [])
    return [i for i in items if (i.get("metadata") or {}).get("name") == name]


def _services(client: Client) -> list[Obj]:
    """Every namespace's Services and ServiceEntries: CUSTOM providers name one."""
    out: list[Obj] = []
    for kind_name in ("Service", "ServiceEntry"):
        out += client.list(resolve(kind_name), None).get("items", [])
    return out


def selected_workloads(client: Client, policy: Obj) -> list[str]:
    """`NAMESPACE/NAME` of the workloads whose sidecars `policy` applies to
    (every namespace's for a policy in the root namespace): the Workloads the
    agents run, and those of sidecars registered by hand. Authentication
    policies select as Istio's: with a selector, only in their own namespace."""
    authn = policy.get("kind") in ("RequestAuthentication", "PeerAuthentication")
    applies = authn_selects if authn else selects
    namespace = (policy.get("metadata") or {}).get("namespace") or "default"
    where = None if namespace == ROOT_NAMESPACE else namespace
    found: dict[str, Mapping[str, str]] = {}
    for workload in client.list(resolve("Workload"), where).get("items", []):
        meta = workload.get("metadata") or {}
        found[f"{meta.get('namespace') or 'default'}/{meta.get('name')}"] = workload_labels(
            workload
        )
    for instance in client.instances():
        ns = str(instance.get("namespace") or "default")
        if where in (None, ns) and instance.get("workload"):
            found.setdefault(f"{ns}/{instance['workload']}", instance.get("labels") or {})
    return sorted(
        name for name, labels in found.items() if applies(policy, name.split("/")[0], labels)
    )
