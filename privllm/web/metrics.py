"""
Prometheus metrics: counts and timings only, never payloads, keys, addresses or request ids.
Every label value comes from an allow-list or the configuration (outcome codes, refusal
reasons, breaker states, node URLs). docs/operations.md says how to read each one.

The buckets were chosen from the raw timings benchmarks.timings measured on the dev stack
(SmolLM2-135M on 2 CPU cores; docs/metrics-timings.json), finest where those fell (gaps of
coalesced chunks at 55-65 ms, about 100 tokens/s, first tokens at 20-30 ms idle and seconds
when queued), and widened to minutes for gpt-oss on a GPU node (docs/operations.md, "Buckets").
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..protocol.errors import REFUSAL_REASONS
from ..upstream import breaker

__all__ = [
    "ANSWER_BUCKETS",
    "BREAKER_STATES",
    "FIRST_BYTE_BUCKETS",
    "FIRST_TOKEN_BUCKETS",
    "GAP_BUCKETS",
    "TOKEN_RATE_BUCKETS",
    "GapTally",
    "RouterMetrics",
]

FIRST_TOKEN_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 8, 15, 30, 60)
ANSWER_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_BYTE_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.06, 0.07, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)
TOKEN_RATE_BUCKETS = (5, 10, 20, 30, 50, 75, 90, 100, 110, 125, 150, 200, 300, 500)
BREAKER_STATES = breaker.STATES


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("privllm_chat_requests", "Chat requests by final outcome", ["outcome"], registry=r)
        self.refusals = Counter(
            "privllm_refusals", "Requests refused by an abuse or capacity control", ["reason"], registry=r
        )
        for reason in sorted(REFUSAL_REASONS):  # each at 0 from the start: a panel shows 0, not "no data"
            self.refusals.labels(reason)
        self.requests.labels("ok")
        # With workers (privllm.workers) every process writes its own files: streams add up over
        # the live workers; node health and breaker states stay per worker (a pid label), since
        # each keeps its own, and a dead worker's view goes with it; the status gauges show the
        # worst of the live workers (they agree but for a moment).
        self.active_streams = Gauge(
            "privllm_active_streams", "Streams being answered now", registry=r, multiprocess_mode="livesum"
        )
        self.queued_streams = Gauge(
            "privllm_queued_streams",
            "Admitted streams waiting for a node slot",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.time_to_first_token = Histogram(
            "privllm_time_to_first_token_seconds",
            "From an admitted request to its first sealed delta",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.answer_time = Histogram(
            "privllm_answer_seconds",
            "From an admitted request to the end of its answer, for answers that ended ok",
            buckets=ANSWER_BUCKETS,
            registry=r,
        )
        self.upstream_first_byte = Histogram(
            "privllm_upstream_first_byte_seconds",
            "From sending a request to a node to its response headers, per node",
            ["node"],
            buckets=FIRST_BYTE_BUCKETS,
            registry=r,
        )
        self.chunk_gap = Histogram(
            "privllm_inter_chunk_seconds",
            "Gap between consecutive sealed deltas of one answer",
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.token_rate = Histogram(
            "privllm_tokens_per_second",
            "Completion tokens per second of generation, per answer that ended ok",
            buckets=TOKEN_RATE_BUCKETS,
            registry=r,
        )
        self.chunks = Counter("privllm_sealed_chunks", "Sealed chunks sent", registry=r)
        self.tokens = Counter(
            "privllm_tokens", "Tokens, all requests together (no per-device records)", ["kind"], registry=r
        )
        self.tool_calls = Counter(
            "privllm_harmony_tool_calls", "Harmony answers ended by a commentary message or tool call", registry=r
        )
        self.node_healthy = Gauge(
            "privllm_node_healthy",
            "1 while the node passes its health check",
            ["node"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.node_failures = Counter("privllm_node_failures", "Failed upstream attempts per node", ["node"], registry=r)
        self.breaker_state = Gauge(
            "privllm_breaker_state",
            "1 for the circuit breaker's current state per node, 0 for the others",
            ["node", "state"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.breaker_transitions = Counter(
            "privllm_breaker_transitions", "Circuit breaker state changes per node", ["node", "state"], registry=r
        )
        self.pow_difficulty = Gauge(
            "privllm_pow_difficulty",
            "Leading zero bits of proof of work asked of a new request now (0: none asked)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replay_entries = Gauge(
            "privllm_replay_entries", "Entries in the replay window now", registry=r, multiprocess_mode="livemax"
        )
        self.replay_capacity = Gauge(
            "privllm_replay_capacity", "Entries the replay window may hold", registry=r, multiprocess_mode="livemax"
        )
        self.key_age = Gauge(
            "privllm_key_age_seconds",
            "Age of the current HPKE key, from its not_before",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rotation_due = Gauge(
            "privllm_key_rotation_due_seconds",
            "Seconds until the next key rotation is due; negative when it is overdue",
            registry=r,
            multiprocess_mode="livemin",
        )

    def gap_tally(self) -> GapTally:
        return GapTally(self.chunk_gap)

    def breaker_changed(self, node: str, state: str) -> None:
        self.breaker_transitions.labels(node, state).inc()
        self.show_breaker(node, state)

    def add_node(self, node: str, breaker_state: str) -> None:
        """Every node's series from the start: health 0 until its first check passes, and each
        breaker transition at 0, so increase() counts the first opening too."""
        self.node_healthy.labels(node).set(0)
        for state in BREAKER_STATES:
            self.breaker_transitions.labels(node, state)
        self.show_breaker(node, breaker_state)

    def show_breaker(self, node: str, state: str) -> None:
        for each in BREAKER_STATES:
            self.breaker_state.labels(node, each).set(1 if each == state else 0)


class GapTally:
    """One answer's gaps between chunks, added to the histogram in bulk once a second rather
    than observed one by one: an observe per chunk (locks, or a memory-mapped file with
    workers) added 2.2 us to 22 per chunk (benchmarks.per_delta, TLS, 9 pairs). It writes the
    histogram's own bucket and sum values, which prometheus_client keeps private: the test
    privllm.test.test_status.GapTallies checks the result equals observing each gap, so an
    upgrade that changes them fails there."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds = list(histogram._upper_bounds)  # ends with +Inf: every gap has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def add(self, gap: float) -> None:
        self._counts[bisect_left(self._bounds, gap)] += 1  # the first bound >= gap, as observe
        self._sum += gap

    def flush(self) -> None:
        if not any(self._counts):
            return
        for value, count in zip(self._histogram._buckets, self._counts, strict=True):
            if count:
                value.inc(count)
        self._histogram._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
