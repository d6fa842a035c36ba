"""The RouteConfiguration fields pilotfish honours; any other field that is set
makes the whole configuration fail to compile, naming the field, so the proxy
never behaves unlike the Envoy its control plane thinks it configured.

Paths are relative to RouteConfiguration, without list indexes; an entry
allows its whole subtree (see `pilotfish.proxy.proto_fields`). Fields that only
label things (names, metadata, decorators, stat prefixes) are accepted; fields
that only exist for a runtime layer pilotfish has not (runtime keys) use their
defaults, as Envoy does with an empty runtime.
"""

from __future__ import annotations

_HEADERS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)
_MIRROR = ("cluster", "runtime_fraction", "trace_sampled", "disable_shadow_host_suffix_append")
_RETRY = (
    "retry_on",
    "num_retries",
    "per_try_timeout",
    "per_try_idle_timeout",
    "retry_host_predicate",
    "host_selection_retry_max_attempts",
    "retriable_status_codes",
    "retry_back_off",
)
_MATCH = (
    "prefix",
    "path",
    "safe_regex",
    "path_separated_prefix",
    "case_sensitive",
    "runtime_fraction",
    "headers",
    "query_parameters",
    "grpc",
    "tls_context",
    "connect_matcher",
)
_WEIGHTED = (
    "total_weight",
    "runtime_key_prefix",
    "header_name",
    *(
        f"clusters.{f}"
        for f in ("name", "weight", "typed_per_filter_config", "host_rewrite_literal", *_HEADERS)
    ),
)
_HASH = (
    "header",
    "cookie.name",
    "cookie.ttl",
    "cookie.path",
    "connection_properties",
    "query_parameter",
    "terminal",
)
_ACTION = (
    "cluster",
    "cluster_header",
    "cluster_not_found_response_code",
    "prefix_rewrite",
    "regex_rewrite",
    "host_rewrite_literal",
    "auto_host_rewrite",
    "host_rewrite_header",
    "append_x_forwarded_host",
    "timeout",
    "idle_timeout",
    "max_stream_duration",
    "max_grpc_timeout",
    "grpc_timeout_offset",
    "include_vh_rate_limits",
    "upgrade_configs.upgrade_type",
    "upgrade_configs.enabled",
    "upgrade_configs.connect_config",
    *(f"weighted_clusters.{f}" for f in _WEIGHTED),
    *(f"retry_policy.{f}" for f in _RETRY),
    *(f"request_mirror_policies.{f}" for f in _MIRROR),
    *(f"hash_policy.{f}" for f in _HASH),
)
_ROUTE = (
    "name",
    "metadata",
    "decorator",
    "stat_prefix",
    "typed_per_filter_config",
    *_HEADERS,
    "redirect",
    "direct_response.status",
    "direct_response.body.inline_string",
    "direct_response.body.inline_bytes",
    *(f"match.{f}" for f in _MATCH),
    *(f"route.{f}" for f in _ACTION),
)
_VHOST = (
    "name",
    "domains",
    "require_tls",
    "metadata",
    "typed_per_filter_config",
    *_HEADERS,
    "include_request_attempt_count",
    "include_attempt_count_in_response",
    *(f"retry_policy.{f}" for f in _RETRY),
    *(f"request_mirror_policies.{f}" for f in _MIRROR),
    *(f"routes.{f}" for f in _ROUTE),
)
_CONFIG = (
    "name",
    "metadata",
    "validate_clusters",
    "max_direct_response_body_size_bytes",
    "most_specific_header_mutations_wins",
    "ignore_port_in_host_matching",
    "ignore_path_parameters_in_path_matching",
    "vhost_header",
    "typed_per_filter_config",
    *_HEADERS,
    *(f"request_mirror_policies.{f}" for f in _MIRROR),
    *(f"virtual_hosts.{f}" for f in _VHOST),
)

SUPPORTED = frozenset(_CONFIG)
