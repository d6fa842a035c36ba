"""`pilotfish`: argument parsing and dispatch; the work is in commands.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pilotfish import __version__
from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.cli import (
    analyze,
    authz,
    commands,
    dashboard,
    discovery,
    dispatch,
    get,
    identity,
    mesh,
    node,
    patch,
    proxyless,
    rollout,
    sidecar,
    stat,
    tap,
    token,
)
from pilotfish.cli.flags import common_options as _common_options
from pilotfish.cli.flags import dry_run as _dry_run
from pilotfish.cli.flags import files as _files
from pilotfish.cli.help import GroupedParser
from pilotfish.proxy.compiled import describe


def main(argv: list[str] | None = None) -> int:
    return dispatch.run(build_parser(), argv)


def build_parser() -> argparse.ArgumentParser:
    parser = GroupedParser(
        prog="pilotfish",
        description="A service mesh with progressive delivery: Istio's config, Flagger's releases.",
    )
    parser.add_argument(
        "--version", action="version", version=f"pilotfish {__version__}, data path: {describe()}"
    )
    sub = parser.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=argparse.ArgumentParser
    )
    common = _common_options()
    _add_controlplane(sub)
    _add_demo(sub)
    sidecar.add_command(sub)
    dispatch.add_apply(sub, common)
    _add_get(sub, common)
    _add_describe(sub, common)
    _add_delete(sub, common)
    _add_diff(sub, common)
    _add_validate(sub)
    analyze.add_command(sub, common)
    _add_proxy_status(sub, common)
    _add_proxy_config(sub, common)
    _add_register(sub, common)
    identity.add_commands(sub, common)
    authz.add_commands(sub, common)
    node.add_commands(sub, common)
    rollout.add_commands(sub, common)
    stat.add_commands(sub, common)
    tap.add_commands(sub, common)
    dashboard.add_commands(sub, common)
    token.add_commands(sub)
    proxyless.add_commands(sub)
    discovery.add_commands(sub, common)
    patch.add_commands(sub, common)
    return parser


def _add_controlplane(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controlplane", help="run the control plane (REST API on 127.0.0.1:15080)")
    p.add_argument("--data-dir", type=Path, default=Path.home() / ".pilotfish" / "data")
    p.add_argument("--listen", default="127.0.0.1:15080", help="address of the REST API")
    p.add_argument(
        "--xds-port",
        type=int,
        default=15010,
        help="port of the ADS (xDS) server on the REST API's host; -1 turns xDS off",
    )
    p.add_argument(
        "--xds-listen",
        metavar="ADDR",
        help="address of the ADS server instead (HOST:PORT); off loopback, proxies need the token",
    )
    p.add_argument(
        "--xds-max-streams",
        type=int,
        default=1024,
        metavar="N",
        help="ADS streams served at once, about one per proxy (default 1024)",
    )
    p.add_argument(
        "--anonymous-reads",
        type=_boolean,
        default=True,
        metavar="true|false",
        help="serve reads without a token to loopback callers, Secrets excepted (default: true)",
    )
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="the dashboard and `pilotfish stat` query this Prometheus (default: own sampler)",
    )
    from pilotfish.controlplane.api_tls import add_tls_flags
    from pilotfish.controlplane.identity import add_ca_flags
    from pilotfish.controlplane.traces_api import add_trace_flags
    from pilotfish.controlplane.xds_tls import add_xds_tls_flags

    add_ca_flags(p)
    add_tls_flags(p)
    add_xds_tls_flags(p)
    add_trace_flags(p)
    _add_store_options(p)
    p.set_defaults(handler=_run_controlplane)


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f'"{text}": must be true or false')


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default="sqlite",
        metavar="URL",
        help="where resources are kept: sqlite (a file in --data-dir, the default), "
        "etcd://HOST:PORT[,HOST:PORT...] or etcds://... (TLS)",
    )
    p.add_argument("--etcd-prefix", help="key prefix in etcd (default /pilotfish)")
    p.add_argument("--etcd-cafile", type=Path, help="CA bundle to verify etcd's certificate")
    p.add_argument("--etcd-certfile", type=Path, help="client certificate for etcd (PEM)")
    p.add_argument("--etcd-keyfile", type=Path, help="client certificate's key (PEM)")


def _run_controlplane(args: argparse.Namespace) -> int:
    from pilotfish.controlplane.api_tls import tls_options
    from pilotfish.controlplane.http import parse_listen
    from pilotfish.controlplane.identity import ca_options
    from pilotfish.controlplane.main import run_controlplane, xds_listen
    from pilotfish.controlplane.traces_api import retention
    from pilotfish.controlplane.xds_tls import plaintext_listen, secure_listen
    from pilotfish.store.backends import StoreOptions
    from pilotfish.xds.limits import Limits

    prefix = args.etcd_prefix or StoreOptions.etcd_prefix
    store = StoreOptions(
        args.store, prefix, args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile
    )
    try:
        parse_listen(args.listen)
        xds = xds_listen(args.xds_port, args.listen, args.xds_listen)
        xds_limits = Limits.for_streams(args.xds_max_streams)
        store.check()
        api_tls = tls_options(args)
        xds_tls = secure_listen(args.xds_tls_port, xds)
        xds = plaintext_listen(xds, args.xds_tls_port, args.xds_plaintext_off_loopback)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run_controlplane(
        args.data_dir,
        args.listen,
        xds_listen=xds,
        ca=ca_options(args),
        store_options=store,
        anonymous_reads=args.anonymous_reads,
        xds_limits=xds_limits,
        prometheus=args.prometheus,
        traces=retention(args),
        api_tls=api_tls,
        xds_tls_listen=xds_tls,
    )


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the whole mesh here: control plane, node agent, gateway, the examples"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="the store (default: ~/.pilotfish/data; with --canary ~/.pilotfish/data-canary)",
    )
    p.add_argument("--listen", default="127.0.0.1:15080", help="address of the REST API")
    p.add_argument("--xds-port", type=int, default=15010, help="port of the ADS server")
    p.add_argument(
        "--gateway-port",
        type=int,
        help="serve the examples' Gateway on this port instead of the one it declares (8080)",
    )
    p.add_argument("--state-dir", type=Path, help="the node agent's directory (default: per node)")
    p.add_argument("--node-name", default="local", help="the node agent's name")
    p.add_argument(
        "--examples",
        type=Path,
        default=Path("examples/bookinfo"),
        help="file or directory of resources to apply",
    )
    p.add_argument(
        "--canary",
        action="store_true",
        help="release reviews with a Flagger Canary (examples/canary): a good release, "
        "then a faulty one that rolls back",
    )
    p.add_argument("--canary-examples", type=Path, default=Path("examples/canary"))
    p.add_argument("--path", default="/productpage", help="the page to open on the gateway")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pilotfish.cli.demo import demo

    return demo(args)


def _add_get(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("get", parents=[common], help="list or show resources")
    p.add_argument(
        "kind",
        help="e.g. virtualservices, vs, dr, workloads, canaries, all; several separated by "
        "commas; or TYPE/NAME",
    )
    p.add_argument("name", nargs="*", help="names, or TYPE/NAME arguments (vs/reviews)")
    p.add_argument("-o", "--output", help="|".join(get.FORMATS))
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-l", "--selector", help="label selector, e.g. app=reviews,version!=v1")
    p.add_argument("-w", "--watch", action="store_true", help="stream changes")
    p.set_defaults(handler=get.get)


def _add_describe(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("describe", parents=[common], help="show a resource in detail")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-l", "--selector")
    p.set_defaults(handler=commands.describe)


def _add_delete(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("delete", parents=[common], help="delete resources by name or file")
    p.add_argument("kind", nargs="?")
    p.add_argument("names", nargs="*")
    _files(p, required=False)
    _dry_run(p)
    p.add_argument(
        "--wait",
        nargs="?",
        const="true",
        default="true",
        choices=["true", "false"],
        help="wait until finalizers let the objects go (default true, as kubectl)",
    )
    p.add_argument(
        "--timeout",
        type=_duration_s,
        default=0.0,
        help="give up waiting after this long (e.g. 30s; default 0: no limit)",
    )
    p.set_defaults(handler=commands.delete)


def _duration_s(text: str) -> float:
    try:
        return parse_duration_ns(text) / 1e9
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_diff(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("diff", parents=[common], help="show what apply would change")
    _files(p)
    p.add_argument("--force-conflicts", action="store_true")
    p.set_defaults(handler=commands.diff)


def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help="check files offline against Istio's and our schemas")
    _files(p)  # directories are always read recursively here, as istioctl validate reads them
    p.set_defaults(handler=commands.validate)


def _add_proxy_status(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "proxy-status", parents=[common], help="connected proxies and their xDS sync state"
    )
    p.add_argument("proxy", nargs="?", help="one proxy's node id (or NAME.NAMESPACE)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(handler=mesh.proxy_status)


def _add_proxy_config(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "proxy-config",
        parents=[common],
        help="the xDS resources a proxy was last sent (secret: its own certificates)",
    )
    p.add_argument("type", choices=mesh.CONFIG_TYPES)
    p.add_argument(
        "proxy",
        help="an instance or Workload name (its first instance; also workload/NAME), "
        "a node id, NAME.NAMESPACE, or a unique prefix of the node id",
    )
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.set_defaults(handler=mesh.proxy_config)


def _add_register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "register", parents=[common], help="register a workload instance with the registry"
    )
    p.add_argument("name", help="instance name, unique in its namespace")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", action="append", metavar="NAME=PORT", required=True)
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.add_argument("--workload", default="", help="workload name (default: the instance name)")
    p.add_argument("--service-account", default="default")
    p.add_argument("--locality", default="", help="region/zone/subzone")
    p.add_argument("--ttl", type=float, default=3.0, help="seconds the registration lasts")
    p.add_argument("--unhealthy", action="store_true", help="registered but not ready")
    p.add_argument(
        "--heartbeat", action="store_true", help="keep renewing until stopped, then deregister"
    )
    p.set_defaults(handler=mesh.register)
