from pathlib import Path

import pytest

from pilotfish.proxy.bootstrap import BootstrapError, load_bootstrap, parse_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

STATIC = (
    """
node:
  id: sidecar~127.0.0.1~reviews-v1-1.default~default.svc.cluster.local
  cluster: reviews
  metadata: {NAME: reviews-v1-1, NAMESPACE: default, LABELS: {app: reviews, version: v1}}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: 15001}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": HCM_TYPE
          stat_prefix: outbound
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8000}}}}]}]
""".replace("HCM_TYPE", HCM)
)


def test_static_bootstrap_from_yaml(tmp_path: Path) -> None:
    f = tmp_path / "bootstrap.yaml"
    f.write_text(STATIC)
    b = load_bootstrap(f)
    assert b.node.metadata["NAME"] == "reviews-v1-1"
    assert b.static_resources.listeners[0].address.socket_address.port_value == 15001
    assert b.static_resources.clusters[0].name == "backend"


def test_json_bootstrap_with_ads() -> None:
    b = parse_bootstrap(
        {
            "node": {"id": "n1"},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
        }
    )
    assert b.dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name == "xds"


def test_unsupported_field_is_rejected_with_its_path() -> None:
    with pytest.raises(BootstrapError, match=r"field not supported by pilotfish: overload_manager"):
        parse_bootstrap({"node": {"id": "n"}, "overload_manager": {"refresh_interval": "1s"}})
    with pytest.raises(BootstrapError, match=r"dynamic_resources.ads_config.rate_limit_settings"):
        parse_bootstrap({"dynamic_resources": {"ads_config": {"rate_limit_settings": {}}}})


def test_unknown_field_and_bad_value_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match=r'no field named "bogus" at "Bootstrap.node"'):
        parse_bootstrap({"node": {"id": "x", "bogus": 1}})
    f = tmp_path / "b.yaml"
    f.write_text("admin: {address: {socket_address: {port_value: abc}}}\n")
    with pytest.raises(BootstrapError, match=r"b.yaml: .*port_value"):
        load_bootstrap(f)
    f.write_text("- a list\n")
    with pytest.raises(BootstrapError, match="YAML or JSON object"):
        load_bootstrap(f)


def test_a_json_bootstrap_reads_as_its_yaml_twin(tmp_path: Path) -> None:
    """JSON is read as JSON (without PyYAML: the node agent writes JSON);
    a YAML flow mapping, which also starts with "{", is still YAML."""
    import json

    import yaml

    data = yaml.safe_load(STATIC)
    as_json, as_yaml, flow = (tmp_path / n for n in ("b.json", "b.yaml", "flow.yaml"))
    as_json.write_text(json.dumps(data, indent=2))
    as_yaml.write_text(STATIC)
    flow.write_text("{node: {id: n1, cluster: c}, admin: {address: {socket_address: {port_value: 9}}}}")
    assert load_bootstrap(as_json) == load_bootstrap(as_yaml)
    assert load_bootstrap(str(as_json)).node.metadata["NAME"] == "reviews-v1-1"
    read = load_bootstrap(flow)
    assert read.node.id == "n1" and read.admin.address.socket_address.port_value == 9


def test_an_unreadable_bootstrap_says_why(tmp_path: Path) -> None:
    f = tmp_path / "b.json"
    f.write_text('{"node": {"id": "n1"},')  # cut short: neither JSON nor YAML
    with pytest.raises(BootstrapError, match=r"b.json: while parsing a flow node .* line 1, column 23"):
        load_bootstrap(f)
    f.write_bytes(b'{"node": {"id": "\xff"}}')
    with pytest.raises(BootstrapError, match=r"b.json: 'utf-8' codec can't decode"):
        load_bootstrap(f)
    with pytest.raises(BootstrapError, match=r"missing.json: \[Errno 2\] No such file"):
        load_bootstrap(tmp_path / "missing.json")
