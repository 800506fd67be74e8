"""
Key configurations (RFC 9458 section 3): what a gateway publishes and a client reads.

Parsing is strict: ids from the allow-list only (an unknown KEM has no known key length, so
the rest could not be read anyway), exact lengths, bounded counts, no duplicates, no trailing
bytes. A client that meets any error drops the whole `application/ohttp-keys` object, as
section 3.2 requires, rather than keeping the configurations it could read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import Malformed, TooLarge
from .suites import KEM_PUBLIC_KEY_SIZE, SymmetricSuite, check_kem
from .wire import Reader

__all__ = [
    "MAX_CONFIGS",
    "MAX_SUITES",
    "SUITE_SIZE",
    "KeyConfig",
    "encode_key_config",
    "encode_key_configs",
    "parse_key_config",
    "parse_key_configs",
]

MAX_SUITES = 16  # three AEADs and one KDF make 3 pairs; room to spare, none for abuse
MAX_CONFIGS = 16
SUITE_SIZE = 4


@dataclass(frozen=True)
class KeyConfig:
    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[SymmetricSuite, ...]

    def __post_init__(self) -> None:
        check_kem(self.kem_id)
        if not 0 <= self.key_id <= 255 or len(self.public_key) != KEM_PUBLIC_KEY_SIZE[self.kem_id]:
            raise Malformed("key config")
        if not self.suites or len(set(self.suites)) != len(self.suites):
            raise Malformed("key config suites")
        if len(self.suites) > MAX_SUITES:
            raise TooLarge("key config suites")


def encode_key_config(config: KeyConfig) -> bytes:
    suites = b"".join(s.kdf_id.to_bytes(2, "big") + s.aead_id.to_bytes(2, "big") for s in config.suites)
    return (
        config.key_id.to_bytes(1, "big")
        + config.kem_id.to_bytes(2, "big")
        + config.public_key
        + len(suites).to_bytes(2, "big")
        + suites
    )


def parse_key_config(data: bytes) -> KeyConfig:
    """One configuration that fills `data` exactly."""
    reader = Reader(data)
    key_id = reader.uint(1)
    kem_id = check_kem(reader.uint(2))
    public_key = reader.take(KEM_PUBLIC_KEY_SIZE[kem_id])
    length = reader.uint(2)
    if length == 0 or length % SUITE_SIZE:
        raise Malformed("key config suites length")
    if length > MAX_SUITES * SUITE_SIZE:
        raise TooLarge("key config suites")
    suites = Reader(reader.take(length))
    reader.end()
    pairs = tuple(SymmetricSuite(suites.uint(2), suites.uint(2)) for _ in range(length // SUITE_SIZE))
    return KeyConfig(key_id, kem_id, public_key, pairs)


def encode_key_configs(configs: Sequence[KeyConfig]) -> bytes:
    """`application/ohttp-keys`: each configuration after its 2-byte length (section 3.2)."""
    _check_list(configs)
    return b"".join(len(encoded).to_bytes(2, "big") + encoded for encoded in map(encode_key_config, configs))


def parse_key_configs(data: bytes) -> tuple[KeyConfig, ...]:
    reader = Reader(data)
    configs: list[KeyConfig] = []
    while reader.remaining:
        if len(configs) == MAX_CONFIGS:
            raise TooLarge("too many key configs")
        configs.append(parse_key_config(reader.take(reader.uint(2))))
    _check_list(configs)
    return tuple(configs)


def _check_list(configs: Sequence[KeyConfig]) -> None:
    if not configs:
        raise Malformed("no key config")
    if len(configs) > MAX_CONFIGS:
        raise TooLarge("too many key configs")
    if len({c.key_id for c in configs}) != len(configs):
        raise Malformed("duplicate key id")
