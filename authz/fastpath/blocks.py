"""The Envoy template's fast-path blocks (authz/stack/envoy_config.py renders them).

With the fast path off every block is None and its placeholder line disappears, so the
rendered configuration is byte for byte what it was before the fast path existed.

With it on, two filters cooperate in one pass (no second round trip):
1. Lua (config from xDS: the issuers' public keys and the tenant table) verifies the
   bearer token (signature and claims, the service's rules: resources.py, jws_lua.py),
   applies the tenant's policy (governance_lua.py), and only for a tenant it holds does
   it replace `authorization` (and the OpenAI-Organization / -Project headers) and mark
   the request decided in dynamic metadata.
2. ext_authz runs unless that mark is set: every request the fast path does not serve
   (client keys, emulator tokens, bad tokens, unknown or rate-limited tenants, whatever
   the Lua cannot prove allowed) is decided by the authz service exactly as with the
   fast path off.
Nothing is routed on: the route is the same for every tenant, so a client-sent header
cannot choose a tenant's key (the clear_route_cache trap of per-tenant routes).

Until the first xDS answer the Lua runs its default config (a Lua that decides
nothing): everything goes to ext_authz.
"""

from __future__ import annotations

from typing import TypeAlias

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | bool

BLOCK_NAMES = ("fast_path_bootstrap", "fast_path_filters", "fast_path_ext_authz",
               "fast_path_access_log")

#: The ECDS resource name (the filter's name in the chain).
LUA_FILTER = "relay.fast_path.lua"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
#: Dynamic metadata the Lua filter sets on a request it decided.
DECIDED_NAMESPACE = "relay.fast_path"
DECIDED_KEY = "decided"
#: The metering log of requests the fast path decided: one OpenTelemetry log record per
#: request, its body these fields, tab-separated, the user last (it may hold a tab):
#: what authz/edge/meter_log.py reads. Envoy builds it at a fraction of the cost of a
#: full gRPC access-log entry (docs/benchmark.md).
METER_LOG_FIELDS = (
    "%RESPONSE_CODE%", "%RESPONSE_FLAGS%", "%BYTES_RECEIVED%", "%BYTES_SENT%",
    "%DYNAMIC_METADATA(relay.usage:input_tokens)%",
    "%DYNAMIC_METADATA(relay.usage:output_tokens)%",
    "%DYNAMIC_METADATA(relay.usage:events)%",
    "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:client_id)%",
    "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:user)%",
)
METER_LOG_NAME = "relay-meter"
OTEL_LOG_TYPE = ("type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3."
                 "OpenTelemetryAccessLogConfig")
#: Lua that decides nothing: every request goes to ext_authz.
NOOP_LUA = "function envoy_on_request(request_handle) end\n"
NODE_ID = "openai-relay"


def envoy_blocks(enabled: bool) -> dict[str, Json | None]:
    if not enabled:
        return dict.fromkeys(BLOCK_NAMES)
    ads: Json = {"ads": {}, "resource_api_version": "V3"}
    return {
        "fast_path_bootstrap": {
            # xDS needs a node identity; ADS rides the authz cluster (HTTP/2 already).
            "node": {"id": NODE_ID, "cluster": NODE_ID},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": True,
                    # Reconnect within 2 s of authz coming back (the default backoff
                    # grows to 30 s): pushes and the lease resume at once.
                    "grpc_services": [{"envoy_grpc": {
                        "cluster_name": "authz",
                        "retry_policy": {"retry_back_off": {"base_interval": "0.5s",
                                                            "max_interval": "2s"}},
                    }}],
                },
            },
        },
        "fast_path_filters": [
            {
                "name": LUA_FILTER,
                "config_discovery": {
                    "config_source": ads,
                    "default_config": {
                        "@type": LUA_TYPE,
                        "default_source_code": {"inline_string": NOOP_LUA},
                    },
                    "apply_default_config_without_warming": True,
                    "type_urls": [LUA_TYPE],
                },
            },
        ],
        "fast_path_access_log": [{
            "name": "relay.fast_path.meter",
            # Only the requests the Lua filter decided (the gRPC access log takes the
            # others: its filter leaves these out).
            "filter": {"metadata_filter": {
                "matcher": {"filter": DECIDED_NAMESPACE, "path": [{"key": DECIDED_KEY}],
                            "value": {"bool_match": True}},
                "match_if_key_not_found": False,
            }},
            "typed_config": {
                "@type": OTEL_LOG_TYPE,
                "disable_builtin_labels": True,
                "log_name": METER_LOG_NAME,
                "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}},
                # As the gRPC access log: usage counts within 1 s.
                "buffer_flush_interval": "0.1s",
                "buffer_size_bytes": 16384,
                "body": {"string_value": "\t".join(METER_LOG_FIELDS)},
            },
        }],
        "fast_path_ext_authz": {
            # Skipped only for a request the Lua filter decided; any other, ext_authz.
            "filter_enabled_metadata": {
                "filter": DECIDED_NAMESPACE,
                "path": [{"key": DECIDED_KEY}],
                "value": {"bool_match": True},
                "invert": True,
            },
        },
    }
