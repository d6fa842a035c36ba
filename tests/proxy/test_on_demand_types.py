"""A sidecar imports the authorization filters (RBAC, ext_authz, JWT, network
RBAC) with the first config that has them, not at start (xds_types.ON_DEMAND;
docs/benchmarks.md, "Idle memory"). Each check runs in a fresh interpreter
that has loaded what a started sidecar has and none of those modules, then
takes the config as it arrives: binary over xDS (an `Any` the proxy decodes
itself) or a bootstrap's JSON/YAML (decoded by json_format)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from pilotfish.proxy import xds_types

T = "type.googleapis.com/envoy.extensions.filters."
DENY_GET = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": T + "http.rbac.v3.RBAC",
        "rules": {
            "action": "DENY",
            "policies": {
                "no-get": {
                    "permissions": [{"header": {"name": ":method", "exact_match": "GET"}}],
                    "principals": [{"any": True}],
                }
            },
        },
    },
}
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "http.router.v3.Router"},
}
PER_ROUTE_OFF = {"@type": T + "http.rbac.v3.RBACPerRoute"}
NETWORK_RBAC = {
    "name": "envoy.filters.network.rbac",
    "typed_config": {"@type": T + "network.rbac.v3.RBAC", "stat_prefix": "tcp."},
}

# What a started sidecar has imported, then the on-demand modules must be absent.
PRELUDE = """
import sys
import pilotfish.proxy.process
ON_DEMAND = ("rbac", "ext_authz", "jwt_authn")
def loaded():
    return sorted(m for m in sys.modules if any(k in m for k in ON_DEMAND))
assert not loaded(), loaded()
"""


def run_fresh(body: str, *args: str) -> str:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_rbac_filter_and_its_per_route_config_arriving_over_xds_load_and_work() -> None:
    xds_types.register_named([DENY_GET, PER_ROUTE_OFF])  # to write them here
    hcm = json_format.ParseDict(
        {"http_filters": [DENY_GET, ROUTER]}, hcm_pb2.HttpConnectionManager()
    )
    route = json_format.ParseDict(
        {"typed_per_filter_config": {"envoy.filters.http.rbac": PER_ROUTE_OFF}},
        route_components_pb2.Route(),
    )
    out = run_fresh(
        """
        import random
        from envoy.config.route.v3 import route_components_pb2
        from envoy.extensions.filters.network.http_connection_manager.v3 import (
            http_connection_manager_pb2 as hcm_pb2,
        )
        from pilotfish.proxy.filters import LocalReply, Proceed, compile_http_filters
        from pilotfish.proxy.routing.per_filter import decode_filter_configs
        from pilotfish.proxy.routing.request import Request

        hcm = hcm_pb2.HttpConnectionManager.FromString(bytes.fromhex(sys.argv[1]))
        route = route_components_pb2.Route.FromString(bytes.fromhex(sys.argv[2]))
        chain = compile_http_filters(hcm.http_filters)
        per_route = decode_filter_configs(route.typed_per_filter_config, "route")
        chain.prepare(per_route)
        get = Request(method=b"GET", path=b"/", authority=b"svc", headers=[])
        post = Request(method=b"POST", path=b"/", authority=b"svc", headers=[])
        denied = chain.decode(chain.start(get), random.Random(0))
        allowed = chain.decode(chain.start(post), random.Random(0))
        assert isinstance(denied, LocalReply) and isinstance(allowed, Proceed), (denied, allowed)
        print(denied.status, type(per_route["envoy.filters.http.rbac"]).__name__)
        print(" ".join(loaded()))
        """,
        hcm.SerializeToString().hex(),
        route.SerializeToString().hex(),
    )
    status_line, modules = out.splitlines()
    assert status_line == "403 RBACPerRoute"
    assert "pilotfish.proxy.filters.rbac" in modules.split()


def test_a_bootstrap_naming_on_demand_types_in_json_decodes() -> None:
    """parse_bootstrap registers each type an "@type" names before decoding:
    an HTTP RBAC filter and a route's RBACPerRoute inline in a listener's
    HCM, and a network RBAC filter before a tcp_proxy."""
    out = run_fresh(
        """
        import json
        from pilotfish.proxy.bootstrap import parse_bootstrap
        from pilotfish.proxy.config import ProxyConfig
        from pilotfish.proxy.process import load_static

        bootstrap = parse_bootstrap(json.loads(sys.argv[1]))
        config = ProxyConfig()
        load_static(bootstrap, config)
        snapshot = config.snapshot
        print(" ".join(sorted([*snapshot.listeners, *snapshot.tcp_listeners])))
        print(" ".join(loaded()))
        """,
        _bootstrap_json(),
    )
    listeners, modules = out.splitlines()
    assert listeners.split() == ["http", "tcp"]
    for module in ("pilotfish.proxy.filters.rbac", "pilotfish.proxy.tcp.rbac"):
        assert module in modules.split()


def _bootstrap_json() -> str:
    import json

    address = {"socket_address": {"address": "127.0.0.1", "port_value": 18001}}
    hcm = {
        "@type": T + "network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http",
        "route_config": {
            "name": "r",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "app"},
                            "typed_per_filter_config": {"envoy.filters.http.rbac": PER_ROUTE_OFF},
                        }
                    ],
                }
            ],
        },
        "http_filters": [DENY_GET, ROUTER],
    }
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": T + "network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp",
            "cluster": "app",
        },
    }
    cluster = {
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "app",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    listeners = [
        {
            "name": "http",
            "address": address,
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
        },
        {
            "name": "tcp",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18002}},
            "filter_chains": [{"filters": [NETWORK_RBAC, tcp_proxy]}],
        },
    ]
    return json.dumps({"static_resources": {"listeners": listeners, "clusters": [cluster]}})


def test_every_on_demand_type_names_its_module() -> None:
    """The table's modules hold the types it maps to them (a typo would only
    show when a sidecar is first sent such a config)."""
    for type_name, module in xds_types.ON_DEMAND.items():
        xds_types.register(type_name)
        imported = sys.modules[module]
        assert type_name.rpartition(".")[2] in vars(imported), (type_name, module)
