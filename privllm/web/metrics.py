"""Prometheus metrics: counts and timings only, never payloads, keys, addresses or request ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "privllm_chat_requests", "Chat requests by outcome", ["outcome"], registry=self.registry
        )
        # With workers (privllm.workers) every process writes its own files: streams add up over
        # the live workers; node health stays per worker (a pid label), since each probes on its
        # own, and a dead worker's view goes with it.
        self.active_streams = Gauge(
            "privllm_active_streams", "Streams being answered now", registry=self.registry, multiprocess_mode="livesum"
        )
        self.time_to_first_chunk = Histogram(
            "privllm_time_to_first_chunk_seconds",
            "From an admitted request to its first sealed delta",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.chunks = Counter("privllm_sealed_chunks", "Sealed chunks sent", registry=self.registry)
        self.upstream_latency = Histogram(
            "privllm_upstream_response_seconds",
            "From sending a request upstream to its response headers, per node",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "privllm_tokens", "Tokens, all requests together (no per-device records)", ["kind"], registry=self.registry
        )
        self.tool_calls = Counter(
            "privllm_harmony_tool_calls",
            "Harmony answers ended by a commentary message or tool call",
            registry=self.registry,
        )
        self.node_healthy = Gauge(
            "privllm_node_healthy",
            "1 while the node passes its health check",
            ["node"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.node_failures = Counter(
            "privllm_node_failures", "Failed upstream attempts per node", ["node"], registry=self.registry
        )
        self.breaker_transitions = Counter(
            "privllm_breaker_transitions",
            "Circuit breaker state changes per node",
            ["node", "state"],
            registry=self.registry,
        )
