"""Merge profile, file and environment, then check every value against the schema."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from ..protocol.addresses import parse_network
from ..protocol.chat import VERBOSITY
from ..protocol.cors import check_origin
from .listen import listener
from .profiles import profile
from .schema import Config

__all__ = ["ENV_PREFIX", "MAX_DOTS", "MAX_ENV_VALUE", "MAX_FILE_BYTES", "SHOWN_KEY", "ConfigError", "load_config"]

ENV_PREFIX = "PRIVLLM_"
MAX_FILE_BYTES = 1 << 16  # a full configuration is about 3 KiB
MAX_ENV_VALUE = 4096
# tomllib's time and memory grow with the square of a dotted key's length (8,000 parts: 0.7 s,
# 250 MB); no real configuration has this many dots, in keys, numbers, addresses or paths.
MAX_DOTS = 1024
SHOWN_KEY = re.compile(r"[a-z0-9_.-]{1,80}")


class ConfigError(Exception):
    """One line naming the key and the reason; the daemon prints it and starts nothing."""

    code = "config"

    def __init__(self, key: str, reason: str) -> None:
        shown = key if SHOWN_KEY.fullmatch(key) else ascii(key[:80])  # a key from the file may hold anything
        super().__init__(f"config {shown}: {reason}")
        self.key = key


def _toml(text: str, where: str) -> dict[str, Any]:
    """tomllib with bounds: ConfigError(where, ...) for anything but a document of sane size."""
    if text.count(".") > MAX_DOTS:
        raise ConfigError(where, f"more than {MAX_DOTS} dots: not a privllm configuration")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(where, f"not valid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(where, "not valid TOML: nested too deeply") from e
    except ValueError as e:  # an integer of thousands of digits
        raise ConfigError(where, "not valid TOML: a number is too long") from e


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from e
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError("--config", f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("--config", "not UTF-8") from e


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """PRIVLLM_SECTION__KEY=value (two underscores between section and key); values are TOML literals or bare strings."""
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if len(raw) > MAX_ENV_VALUE:
            raise ConfigError(f"{section}.{key}", f"longer than {MAX_ENV_VALUE} characters")
        try:
            value = _toml(f"v = {raw}", name)["v"]
        except ConfigError:
            value = raw
        layer.setdefault(section, {})[key] = value
    return layer


def _coerce(key: str, value: Any, kind: Any, meta: Mapping[str, Any]) -> Any:
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise ConfigError(key, "must be a list of non-empty strings")
        return list(value)
    kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(key, f"must be of type {kind.__name__}")
    if "range" in meta:
        low, high = meta["range"]
        if not low <= value <= high:
            raise ConfigError(key, f"must be between {low} and {high}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, f"must be one of {', '.join(meta['choices'])}")
    return value


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}", "unknown key")
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(f.default) and not isinstance(f.default, type):
            if not isinstance(data[name], Mapping):
                raise ConfigError(key, "must be a table")
            values[name] = _build(type(f.default), data[name], f"{key}.")
        else:
            values[name] = _coerce(key, data[name], f.type, f.metadata)
    return cls(**values)


def load_config(env: str, path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    if env not in ("dev", "prod"):
        raise ConfigError("env", "must be one of dev, prod")
    data = profile(env)
    if path:
        data = _merge(data, _toml(_read_file(path), "--config"))
    data = _merge(data, _from_environment(os.environ if environ is None else environ))
    if data.get("env", env) != env:
        raise ConfigError("env", "the file or environment names a different profile than --env")
    config: Config = _build(Config, data, "")
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    for level in VERBOSITY:
        if getattr(config.chat, f"{level}_max_tokens") > config.chat.max_tokens:
            raise ConfigError(f"chat.{level}_max_tokens", "must not exceed chat.max_tokens")
    _check_backends(config)
    _check_addresses(config)
    _check_state(config)
    _check_origins(config)
    _check_listeners(config)
    if not config.keys.state_dir:
        raise ConfigError("keys.state_dir", "must be set")
    if config.is_dev:
        return
    for key, value in (
        ("server.certificate", config.server.certificate),
        ("server.private_key", config.server.private_key),
    ):
        if not value:
            raise ConfigError(key, "must be set in prod")
    if not config.backend.urls:
        raise ConfigError("backend.urls", "must name at least one backend in prod")
    if config.llama.spawn:
        raise ConfigError("llama.spawn", "prod runs llama-server as its own service, not spawned")


def _check_state(config: Config) -> None:
    state = config.state
    if state.backend == "memory":
        if config.server.workers > 1:
            # Each worker would keep its own replay window and limits: a replay accepted once per worker.
            raise ConfigError("server.workers", 'more than one worker needs state.backend = "redis"')
        return
    # Names in Redis are looked up in three hashing epochs: anything that must be remembered
    # longer than one epoch (a replay entry, a spent proof of work, a lease between renewals)
    # would be lost with its name.
    longest = max(config.replay.window + config.replay.future_skew + 1, config.pow.ttl + 1, state.lease_ttl)
    if state.key_rotation < longest:
        raise ConfigError("state.key_rotation", f"must be at least {longest} s (replay window, pow.ttl, lease_ttl)")
    url = state.url
    if not (url.startswith("unix:///") or url.startswith("rediss://")):
        raise ConfigError("state.url", "must be unix:///absolute/path or rediss://host:port (TLS)")
    if url.startswith("rediss://") and not (state.user and state.password_file):
        raise ConfigError("state.user", "a Redis over the network needs an ACL user and state.password_file")
    if bool(state.user) != bool(state.password_file):
        raise ConfigError("state.password_file", "state.user and state.password_file go together")


def _check_addresses(config: Config) -> None:
    replay = config.replay
    if replay.future_skew > replay.window:
        raise ConfigError("replay.future_skew", "must not exceed replay.window")
    if replay.max_entries_per_address > replay.max_entries:
        raise ConfigError("replay.max_entries_per_address", "must not exceed replay.max_entries")
    if config.ohttp.relay_replay_entries > replay.max_entries:
        raise ConfigError("ohttp.relay_replay_entries", "must not exceed replay.max_entries")
    if config.server.trusted_proxies and not config.server.client_address_header:
        # Every client would count as the proxy: one could spend everyone's limits.
        raise ConfigError("server.client_address_header", "must be set when server.trusted_proxies is")
    for key, entries in (
        ("server.trusted_proxies", config.server.trusted_proxies),
        ("server.proxy_protocol_from", config.server.proxy_protocol_from),
        ("ohttp.relays", config.ohttp.relays),
    ):
        for entry in entries:
            try:
                parse_network(entry)
            except ValueError:
                raise ConfigError(key, "each entry is an IP address or CIDR") from None
    relays = {parse_network(entry) for entry in config.ohttp.relays}
    if any(network in relays for network in map(parse_network, config.server.trusted_proxies)):
        # A relay's requests never name a client: the same peer cannot also be a proxy that does.
        raise ConfigError("ohttp.relays", "an entry is also in server.trusted_proxies")
    if config.server.proxy_protocol and not config.server.proxy_protocol_from:
        # Anyone could otherwise name any client address in the header.
        raise ConfigError("server.proxy_protocol_from", "must name the load balancers when server.proxy_protocol is on")
    if config.server.proxy_protocol and config.server.trusted_proxies:
        # TLS ends here, so a forwarding header would come from the client itself; and a LOCAL
        # header reports the load balancer, which would then be trusted to name any client.
        raise ConfigError("server.trusted_proxies", "must be empty when server.proxy_protocol is on")


def _check_backends(config: Config) -> None:
    backend = config.backend
    for url in backend.urls:
        if not (url.startswith("unix:///") or url.startswith("https://")):
            raise ConfigError("backend.urls", f"{url!r} must be unix:///absolute/path or https://host:port")
        if url.startswith("https://") and not (backend.ca and backend.client_certificate and backend.client_key):
            raise ConfigError(
                "backend.ca", "https backends need backend.ca, backend.client_certificate and backend.client_key"
            )
    try:
        backend.pins_by_host()
    except ValueError as e:
        raise ConfigError("backend.pins", str(e)) from None
    if len(set(backend.urls)) != len(backend.urls):
        raise ConfigError("backend.urls", "a backend is named twice")


def _check_origins(config: Config) -> None:
    origins = config.server.cors_origins
    for entry in origins:
        reason = check_origin(entry, allow_http_loopback=config.is_dev)
        if reason is not None:
            raise ConfigError("server.cors_origins", reason)
    if len(set(origins)) != len(origins):
        raise ConfigError("server.cors_origins", "an origin is named twice")


def _check_listeners(config: Config) -> None:
    for name, section in (("server", config.server), ("metrics", config.metrics)):
        try:
            found = listener(section)
        except ValueError as e:
            raise ConfigError(f"{name}.listen" if section.listen else f"{name}.host", str(e)) from None
        if name == "server" and (found.kind == "unix" or found.domain == "UNIX"):
            # A UNIX peer has no IP address: every client would share one address's limits.
            raise ConfigError(
                "server.listen",
                "must be TCP (tcp:, tcp6:, or systemd: with INET or INET6): every per-address limit"
                " keys on the client's IP address, which a UNIX socket's peer has none of",
            )
