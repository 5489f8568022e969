"""What runs inside the router of a base model: the Endpoint Picker's (EPP, Gateway API Inference
Extension v1.5.0) configuration and flags, and Envoy 1.40's static bootstrap and fallback
endpoints. Pure functions of settings, no Kubernetes objects (those are `router`).

The data path: a client calls Envoy on ENVOY_PORT; Envoy streams each completion request to the
EPP over ext_proc on localhost; the EPP scores the base model's pods from their /metrics (queue,
KV cache, prefix, LoRA affinity) and answers with header DESTINATION_HEADER = "<pod IP>:<port>";
Envoy sends the request there through an ORIGINAL_DST cluster. When the EPP does not answer and
the router fails open, the request goes to any Ready pod of the fallback cluster, whose endpoints
Envoy reads from ENDPOINTS_DIR/ENDPOINTS_FILE (file-based EDS; the operator rewrites that
ConfigMap when the Ready pods change). Envoy 1.40 cannot fail open itself once ext_proc has
streamed a body to the EPP (measured: every request answered 503 while the EPP was down), so the
fallback is a second hop inside Envoy (see envoy_config).

EPP v1.5.0 facts this module is built on (read in its source, checked against the binary):

- `--endpoint-selector` mode (no InferencePool) does not start in v1.5.0 or v1.4.0: the runner
  hands the empty --pool-name and --pool-namespace to the endpoint pool ("namespace must not be
  empty", then "name must not be empty"), and --pool-name may not be combined with the selector.
  `epp_pool_args` (an InferencePool, its CRD installed) is what runs; `epp_args` is kept for EPP
  builds that fixed it (GIE after v1.5.0 passes the resolved name and namespace).
- A request without `model` in its JSON body gets 400 "model not found in request body"; any other
  model name is scheduled (the EPP does not know which names are served); a request whose headers
  end the stream (a GET) goes to a random pod.
- The picked endpoint comes back as a header mutation with clear_route_cache, so Envoy matches
  routes again after the EPP answered: routes keyed on the header's presence send picked requests
  to the ORIGINAL_DST cluster and the rest (fail open) to the fallback cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

# The EPP's ports: its defaults (pkg/epp/server/options.go), which its chart and docs use too.
EPP_GRPC_PORT = 9002  # ext_proc, plaintext, reached by Envoy over localhost only
EPP_HEALTH_PORT = 9003  # gRPC health
EPP_METRICS_PORT = 9090  # Prometheus /metrics (no auth: --metrics-endpoint-auth=false)
# The gRPC health service to probe: without leader election the EPP answers SERVING for any name
# once it has synced its pool; with leader election only known names (this one: ready and leader).
EPP_HEALTH_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
ENVOY_PORT = 8081  # what clients call (the GIE standalone chart's port)
# Envoy's admin API, bound to 127.0.0.1: it can stop Envoy and dump its configuration. Only its
# /ready is reachable from outside, as HEALTH_PATH on ENVOY_PORT.
ENVOY_ADMIN_PORT = 19000
# Envoy's second listener, on 127.0.0.1 (see envoy_config): where ext_proc asks the EPP.
ENVOY_EPP_HOP_PORT = 18081
HEALTH_PATH = "/health"  # on ENVOY_PORT: Envoy's own readiness (admin /ready), never a pod's
CONFIG_DIR = "/etc/loraplane-router"  # ConfigMap volume: EPP_CONFIG_FILE and ENVOY_CONFIG_FILE
ENDPOINTS_DIR = "/etc/loraplane-router-endpoints"  # ConfigMap volume: ENDPOINTS_FILE
EPP_CONFIG_FILE = "epp.yaml"
ENVOY_CONFIG_FILE = "envoy.yaml"
ENDPOINTS_FILE = "eds.yaml"
# The LoRA signal: our plugin's gauge of what is resident (GPU slots as running adapters, the CPU
# cache as waiting), shaped like vLLM's gauge, which lists only adapters with requests in flight.
RESIDENCY_METRIC = "loraplane:lora_residency_info"
VLLM_LORA_METRIC = "vllm:lora_requests_info"
# The header the EPP answers with (GIE's protocol, pkg/epp/metadata) and Envoy routes on.
DESTINATION_HEADER = "x-gateway-destination-endpoint"
# On every inference answer: ROUTED_BY_EPP when the EPP picked the pod, ROUTED_BY_FALLBACK when it
# did not answer and the router failed open (for clients, dashboards and tests to tell them apart).
ROUTED_BY_HEADER = "x-loraplane-routed-by"
ROUTED_BY_EPP = "epp"
ROUTED_BY_FALLBACK = "fallback"
# And the pod that answered, as "<IP>:<port>": where a request landed, for users and the demo.
SERVED_BY_HEADER = "x-loraplane-pod"
# The only paths clients reach: inference goes through the EPP; /v1/models is the same on every
# Ready pod (each registers every adapter), so any pod answers it. Everything else is 404 here,
# vLLM's /v1/load_lora_adapter, /v1/unload_lora_adapter and unguarded POST /adapters above all.
PICKED_PATHS = ("/v1/completions", "/v1/chat/completions")
MODELS_PATH = "/v1/models"
# The InferencePool API the EPP v1.5.0 reads (--pool-group's default).
INFERENCE_POOL_GROUP = "inference.networking.k8s.io"

# Envoy's cluster names (internal to the bootstrap, visible in its stats).
_EPP_CLUSTER = "epp"  # the EPP's ext_proc port
_EPP_HOP_CLUSTER = "epp_hop"  # Envoy's own second listener, where ext_proc runs
_PICKED_CLUSTER = "picked"  # the pod the EPP picked (ORIGINAL_DST)
_FALLBACK_CLUSTER = "fallback"  # every Ready pod (file EDS)
_INFERENCE_CLUSTER = "inference"  # the hop while it is healthy, else the fallback (aggregate)
_ADMIN_CLUSTER = "admin"
# Envoy's default circuit breakers (1024 connections, pending and active requests) would answer
# 503 to a burst that vLLM can queue itself; GIE's chart raises them the same way.
_CIRCUIT_BREAKER_LIMIT = 40000
# Retries, each to a host not tried yet: a pod that left between two rewrites of the endpoints
# ConfigMap refuses the connection, and one more try usually finds a live one.
_RETRIES = 2
# How long Envoy waits for the EPP's answer to one message. The EPP answers the headers only once
# the whole body has arrived, so this bounds body upload plus scheduling; a hung EPP then fails
# the request (open or closed) instead of holding it.
_EPP_MESSAGE_TIMEOUT_SECONDS = 30
# The EPP's staleness threshold is 2 s for its default refresh of 50 ms; ten missed refreshes at
# ours, and never below that default.
_STALE_AFTER_REFRESHES = 10
_EPP_DEFAULT_STALENESS_MS = 2000

_ANY = "type.googleapis.com/"
_EARLY_HEADER_MUTATION = (
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)


@dataclass(frozen=True)
class ScorerWeights:
    """The EPP scorers' weights; a weight of 0 leaves the scorer out.

    Defaults: GIE's own (queue 2, KV cache 2, prefix 3) and the LoRA scorer at KServe's 4, so that
    a pod holding the adapter wins over a slightly shorter queue elsewhere.
    """

    queue: int = 2
    kv_cache: int = 2
    prefix: int = 3
    lora: int = 4


# ScorerWeights field -> the EPP plugin type (pkg/epp/framework/plugins/scheduling/scorer).
_SCORERS = (
    ("queue", "queue-scorer"),
    ("kv_cache", "kv-cache-utilization-scorer"),
    ("prefix", "prefix-cache-scorer"),
    ("lora", "lora-affinity-scorer"),
)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)


def epp_config(weights: ScorerWeights, lora_metric: str) -> str:
    """The EndpointPickerConfig (EPP v1.5.0): the weighted scorers, the max-score picker, and the
    metrics scrape with vLLM's metric names restated except the LoRA one, `lora_metric`."""
    scorers = [(plugin, getattr(weights, field)) for field, plugin in _SCORERS]
    for field, _ in _SCORERS:
        if getattr(weights, field) < 0:
            raise ValueError(f"scorer weight {field} must be 0 or more")
    chosen = [(plugin, weight) for plugin, weight in scorers if weight > 0]
    # The engine's specs as v1.5.0 defaults them (extractor/metrics/factories.go), restated so that
    # the config alone says what is scraped, with loraSpec replaced.
    vllm_engine = {
        "name": "vllm",
        "queuedRequestsSpec": "vllm:num_requests_waiting",
        "runningRequestsSpec": "vllm:num_requests_running",
        "kvUsageSpec": "vllm:kv_cache_usage_perc",
        "loraSpec": lora_metric,
        "cacheInfoSpec": "vllm:cache_config_info",
    }
    doc = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            *({"type": plugin} for plugin, _ in chosen),
            {"type": "max-score-picker"},
            {"type": "openai-parser"},
            {
                "type": "metrics-data-source",
                "parameters": {"scheme": "http", "path": "/metrics", "insecureSkipVerify": True},
            },
            {
                "type": "core-metrics-extractor",
                "parameters": {"defaultEngine": "vllm", "engineConfigs": [vllm_engine]},
            },
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    *({"pluginRef": plugin, "weight": weight} for plugin, weight in chosen),
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
        "parser": {"pluginRef": "openai-parser"},
        "dataLayer": {
            "sources": [
                {
                    "pluginRef": "metrics-data-source",
                    "extractors": [{"pluginRef": "core-metrics-extractor"}],
                }
            ]
        },
    }
    return _dump(doc)


def _epp_common_args(refresh_metrics_ms: int) -> list[str]:
    if refresh_metrics_ms <= 0:
        raise ValueError("refresh_metrics_ms must be positive")
    stale_ms = max(_EPP_DEFAULT_STALENESS_MS, _STALE_AFTER_REFRESHES * refresh_metrics_ms)
    return [
        "--config-file",
        f"{CONFIG_DIR}/{EPP_CONFIG_FILE}",
        f"--grpc-port={EPP_GRPC_PORT}",
        f"--grpc-health-port={EPP_HEALTH_PORT}",
        f"--metrics-port={EPP_METRICS_PORT}",
        # Envoy reaches the EPP over the pod's loopback: a self-signed certificate (the default)
        # would protect nothing and need TLS settings in Envoy.
        "--secure-serving=false",
        # The default asks the API server (TokenReview, SubjectAccessReview) about every scrape of
        # /metrics, which needs a ClusterRole; the metrics carry no secrets.
        "--metrics-endpoint-auth=false",
        # On by default, exporting to an OTLP collector that does not exist.
        "--tracing=false",
        # On by default: heap and goroutine dumps on the metrics port.
        "--enable-pprof=false",
        f"--refresh-metrics-interval={refresh_metrics_ms}ms",
        f"--metrics-staleness-threshold={stale_ms}ms",
    ]


def epp_pool_args(pool_name: str, namespace: str, refresh_metrics_ms: int) -> list[str]:
    """The EPP's flags against an InferencePool `pool_name` in `namespace` (its selector and
    target port say which pods it picks from and where they listen). Needs RBAC get/list/watch on
    pods and on inferencepools.inference.networking.k8s.io in the namespace."""
    return [
        "--pool-name",
        pool_name,
        "--pool-namespace",
        namespace,
        "--pool-group",
        INFERENCE_POOL_GROUP,
        *_epp_common_args(refresh_metrics_ms),
    ]


def epp_args(
    endpoint_selector: str, namespace: str, target_port: int, refresh_metrics_ms: int
) -> list[str]:
    """The EPP's flags without an InferencePool (pods by label `key=value[,key=value]`).

    EPP v1.5.0 exits at start with these (see the module docstring): use `epp_pool_args` with it.
    Such a build also needs env POD_NAME, a Deployment's pod name (name-hash-suffix), from which
    it takes its own name.
    """
    return [
        "--endpoint-selector",
        endpoint_selector,
        "--endpoint-target-ports",
        str(target_port),
        "--pool-namespace",
        namespace,
        *_epp_common_args(refresh_metrics_ms),
    ]


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": _ANY + type_name, **fields}


def _endpoint(address: str, port: int, health_port: int | None = None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": _socket(address, port)}
    if health_port is not None:
        endpoint["health_check_config"] = {"port_value": health_port}
    return {"endpoint": endpoint}


def _cluster(name: str, lb_endpoints: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        **fields,
    }


def _circuit_breakers() -> dict[str, Any]:
    limit = _CIRCUIT_BREAKER_LIMIT
    return {
        "thresholds": [
            {"max_connections": limit, "max_pending_requests": limit, "max_requests": limit}
        ]
    }


def _http2() -> dict[str, Any]:
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    return {options: _typed(options, explicit_http_config={"http2_protocol_options": {}})}


def _routed_by(value: str, action: str) -> list[dict[str, Any]]:
    """The answer's headers saying how it was routed and which pod gave it (on the hop, the
    picked pod; on the client listener, a fallback pod unless the hop said already)."""
    return [
        {"header": {"key": ROUTED_BY_HEADER, "value": value}, "append_action": action},
        {"header": {"key": SERVED_BY_HEADER, "value": "%UPSTREAM_HOST%"}, "append_action": action},
    ]


def _retry(retry_on: str, **fields: Any) -> dict[str, Any]:
    """A retry policy whose retries go to hosts not tried yet."""
    return {
        "retry_on": retry_on,
        "num_retries": _RETRIES,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": 5,
        **fields,
    }


def _hcm(stat_prefix: str, routes: list[dict[str, Any]], filters: list[dict[str, Any]]) -> Any:
    return _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=stat_prefix,
        route_config={
            "name": stat_prefix,
            "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
        },
        http_filters=[
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.router.v3.Router", suppress_envoy_headers=True
                ),
            },
        ],
    )


def _listener(name: str, address: str, port: int, hcm: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": _socket(address, port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def envoy_config(
    fail_open: bool, request_timeout_seconds: int, *, endpoints_dir: str = ENDPOINTS_DIR
) -> str:
    """Envoy 1.40's static bootstrap. `fail_open`: while the EPP does not answer, requests go to
    any Ready pod (else they get 503). `request_timeout_seconds` bounds a request upstream and
    its silences. `endpoints_dir`: where ENDPOINTS_FILE is (another place only for tests: Envoy
    refuses a bootstrap whose file does not exist).

    Two hops, because ext_proc cannot fail open once it has streamed the body to the EPP
    (FULL_DUPLEX_STREAMED: an EPP that dies, or is down and not yet known to be, costs the request
    a 503). The client listener (ENVOY_PORT) has no ext_proc: it sends inference to an aggregate
    cluster, the EPP hop first and the fallback pods when the hop is unhealthy (the EPP's gRPC
    health says not serving, or nothing listens), and retries a 503 or a failed connection there
    too. The hop (127.0.0.1:ENVOY_EPP_HOP_PORT) runs ext_proc without failing open and sends the
    request to the pod the EPP picked."""
    if request_timeout_seconds <= 0:
        raise ValueError("request_timeout_seconds must be positive")
    timeout = f"{request_timeout_seconds}s"
    not_found = {
        "name": "not-found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": '{"detail":"Not Found"}'}},
    }
    if fail_open:
        inference_route = {
            "cluster": _INFERENCE_CLUSTER,
            "timeout": timeout,
            "idle_timeout": timeout,
            # A retry goes to the next priority, the fallback pods: the hop's 503 (the EPP failed
            # or refused to pick, or the picked pod failed) and a refused connection alike.
            "retry_policy": _retry(
                "connect-failure,refused-stream,reset,retriable-status-codes",
                retriable_status_codes=[503],
                retry_priority={
                    "name": "envoy.retry_priorities.previous_priorities",
                    "typed_config": _typed(
                        "envoy.extensions.retry.priority.previous_priorities.v3"
                        ".PreviousPrioritiesConfig",
                        update_frequency=1,
                    ),
                },
            ),
        }
    else:
        inference_route = {"cluster": _EPP_HOP_CLUSTER, "timeout": timeout, "idle_timeout": timeout}
    client_routes: list[dict[str, Any]] = [
        {
            "name": "health",
            "match": {"path": HEALTH_PATH},
            "route": {"cluster": _ADMIN_CLUSTER, "prefix_rewrite": "/ready", "timeout": "2s"},
        },
        # /v1/models too goes the EPP's way first (a GET: the EPP picks any Ready pod), so that
        # it answers as soon as the pods are Ready; the fallback list reaches Envoy only with
        # the kubelet's next sync of its ConfigMap volume (up to a minute or so).
        *(
            {
                "name": f"inference{path}",
                "match": {"path": path},
                "route": inference_route,
                # The hop marks what the EPP picked; anything else came from the fallback pods.
                "response_headers_to_add": _routed_by(ROUTED_BY_FALLBACK, "ADD_IF_ABSENT"),
            }
            for path in (MODELS_PATH, *PICKED_PATHS)
        ),
        not_found,
    ]
    client = _hcm("router", client_routes, [])
    client.update(
        {
            "use_remote_address": True,
            # Paths are compared after normalisation, so /v1/completions/../load_lora_adapter and
            # //v1/load_lora_adapter cannot slip past the route list; no API path has an escaped
            # slash (%2F), so a request with one is refused (400).
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            # A client's own destination header would pick any address the router can reach: it
            # is dropped before routing, and the EPP's answer on the hop is the only one counted.
            "early_header_mutation_extensions": [
                {
                    "name": "envoy.http.early_header_mutation.header_mutation",
                    "typed_config": _typed(
                        _EARLY_HEADER_MUTATION, mutations=[{"remove": DESTINATION_HEADER}]
                    ),
                }
            ],
        }
    )
    hop_routes: list[dict[str, Any]] = [
        {
            # Matched once the EPP answered: its header mutation clears the route cache.
            "name": "picked",
            "match": {
                "prefix": "/",
                "headers": [{"name": DESTINATION_HEADER, "present_match": True}],
            },
            "route": {"cluster": _PICKED_CLUSTER, "timeout": timeout, "idle_timeout": timeout},
            "response_headers_to_add": _routed_by(ROUTED_BY_EPP, "OVERWRITE_IF_EXISTS_OR_ADD"),
        },
        {
            # Where a request stands while the EPP decides; reached only if it answered with no
            # pod, which the client listener then retries on the fallback pods.
            "name": "unpicked",
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": "the EPP picked no pod"}},
        },
    ]
    ext_proc: dict[str, Any] = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={"envoy_grpc": {"cluster_name": _EPP_CLUSTER}},
            failure_mode_allow=False,
            # What the EPP expects (GIE's standalone chart): headers, then the body streamed both
            # ways; the response too, for its request metrics. FULL_DUPLEX_STREAMED needs the
            # trailers sent.
            processing_mode={
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "FULL_DUPLEX_STREAMED",
                "response_body_mode": "FULL_DUPLEX_STREAMED",
                "request_trailer_mode": "SEND",
                "response_trailer_mode": "SEND",
            },
            message_timeout=f"{_EPP_MESSAGE_TIMEOUT_SECONDS}s",
            # The status the client listener retries on the fallback pods (when failing open),
            # and that tells clients to retry (when failing closed).
            status_on_error={"code": 503},
        ),
    }
    hop = _hcm("epp_hop", hop_routes, [ext_proc])
    second = "1s"
    clusters = [
        _cluster(
            _EPP_CLUSTER,
            [_endpoint("127.0.0.1", EPP_GRPC_PORT)],
            typed_extension_protocol_options=_http2(),
        ),
        _cluster(
            _EPP_HOP_CLUSTER,
            # Checked with the EPP's gRPC health (serving once it has read its pool), on the
            # EPP's health port: the hop is only as healthy as the EPP behind it.
            [_endpoint("127.0.0.1", ENVOY_EPP_HOP_PORT, health_port=EPP_HEALTH_PORT)],
            typed_extension_protocol_options=_http2(),
            health_checks=[
                {
                    "timeout": second,
                    "interval": second,
                    # Without traffic (the EPP down, so nothing sent to the hop) Envoy would check
                    # once a minute, and an EPP back would wait that long.
                    "no_traffic_interval": second,
                    "no_traffic_healthy_interval": second,
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                    "grpc_health_check": {"service_name": EPP_HEALTH_SERVICE},
                }
            ],
            # An unhealthy hop gets no requests at all (no panic routing): they go to the fallback.
            common_lb_config={"healthy_panic_threshold": {"value": 0}},
            circuit_breakers=_circuit_breakers(),
        ),
        {
            "name": _PICKED_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "5s",
            "original_dst_lb_config": {
                "use_http_header": True,
                "http_header_name": DESTINATION_HEADER,
            },
            "circuit_breakers": _circuit_breakers(),
        },
        {
            "name": _FALLBACK_CLUSTER,
            "type": "EDS",
            "lb_policy": "LEAST_REQUEST",
            "connect_timeout": "5s",
            "eds_cluster_config": {
                "service_name": _FALLBACK_CLUSTER,
                "eds_config": {
                    "resource_api_version": "V3",
                    # watched_directory: Envoy reloads the file when an entry of the directory is
                    # moved into place, which is how the kubelet swaps a ConfigMap volume's ..data
                    # symlink (and how a writer replaces a file atomically).
                    "path_config_source": {
                        "path": f"{endpoints_dir}/{ENDPOINTS_FILE}",
                        "watched_directory": {"path": endpoints_dir},
                    },
                },
            },
            "circuit_breakers": _circuit_breakers(),
        },
        {
            "name": _INFERENCE_CLUSTER,
            "connect_timeout": "5s",
            "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {
                "name": "envoy.clusters.aggregate",
                "typed_config": _typed(
                    "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                    clusters=[_EPP_HOP_CLUSTER, _FALLBACK_CLUSTER],
                ),
            },
        },
        _cluster(_ADMIN_CLUSTER, [_endpoint("127.0.0.1", ENVOY_ADMIN_PORT)]),
    ]
    doc = {
        # File-based EDS, like any xDS subscription, wants a node identity; nothing reads it.
        "node": {"id": "loraplane-router", "cluster": "loraplane-router"},
        "admin": {"address": _socket("127.0.0.1", ENVOY_ADMIN_PORT)},
        "static_resources": {
            "listeners": [
                _listener("router", "0.0.0.0", ENVOY_PORT, client),
                _listener("epp_hop", "127.0.0.1", ENVOY_EPP_HOP_PORT, hop),
            ],
            "clusters": clusters,
        },
    }
    return _dump(doc)


def envoy_args(concurrency: int) -> list[str]:
    """Envoy's command line: the bootstrap in CONFIG_DIR, `concurrency` worker threads."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    return [
        "-c",
        f"{CONFIG_DIR}/{ENVOY_CONFIG_FILE}",
        "--concurrency",
        str(concurrency),
        "--log-level",
        "warn",
        # A container is replaced, never hot-restarted; and hot restart's shared memory (base id
        # 0) would make two Envoys that share /dev/shm, as pods of the process node do, collide.
        "--disable-hot-restart",
    ]


def endpoints(pod_ips: Sequence[str], port: int) -> str:
    """The fallback cluster's endpoints as file-based EDS reads them: a DiscoveryResponse holding
    one ClusterLoadAssignment. No pods is a valid answer (the fallback then answers 503)."""
    assignment = {
        "@type": _ANY + "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": _FALLBACK_CLUSTER,
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _socket(ip, port)}} for ip in pod_ips]}
        ]
        if pod_ips
        else [],
    }
    return _dump({"resources": [assignment]})
