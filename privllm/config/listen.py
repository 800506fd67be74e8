"""
Where a listener is: `server.listen` and `metrics.listen`, in Twisted's server endpoint string
syntax (`tcp:8443:interface=127.0.0.1`, `tcp6:8443:interface=\\:\\:1`, `unix:/run/privllm.sock`,
`systemd:domain=INET6:name=privllm`), or, when empty, TCP on `host` and `port`.

The string is parsed here against an allow-list of kinds and of parameters per kind, and
handed to Twisted rendered again from what was checked, so Twisted never reads a parameter
this module did not. TLS and the PROXY protocol are privllm's own (server.certificate,
server.proxy_protocol with its allow-list of load balancers), so `ssl:` and `haproxy:` are
refused, as is every other kind.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DOMAINS",
    "FD_NAME",
    "KEYWORDS",
    "KINDS",
    "MAX_INDEX",
    "MAX_LENGTH",
    "MAX_PATH",
    "MODE",
    "POSITIONAL",
    "REFUSED",
    "HasListen",
    "Listen",
    "listener",
    "parse_listen",
]

MAX_LENGTH = 512
KINDS = ("tcp", "tcp6", "unix", "systemd")
REFUSED = {
    "ssl": "TLS is privllm's own (server.certificate and server.private_key): listen on tcp:, tcp6: or systemd:",
    "haproxy": "the PROXY protocol is server.proxy_protocol, with its allow-list server.proxy_protocol_from",
}
# Parameters each kind accepts, positional ones first (Twisted's order).
POSITIONAL = {"tcp": ("port",), "tcp6": ("port",), "unix": ("address",), "systemd": ()}
KEYWORDS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "unix": ("address", "mode", "backlog"),
    "systemd": ("domain", "index", "name"),
}
DOMAINS = ("INET", "INET6", "UNIX")
FD_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,255}")  # systemd's FileDescriptorName, without ':'
MODE = re.compile(r"0?[0-7]{3}")
MAX_PATH = 107  # sun_path, less its terminating NUL
MAX_INDEX = 1023


@dataclass(frozen=True)
class Listen:
    """One listener, checked: `endpoint()` is the string Twisted's serverFromString is given."""

    kind: str
    port: int = 0  # tcp, tcp6 (0: any free port)
    interface: str = ""  # tcp, tcp6: an address literal; empty: every address of the family
    backlog: int = 0  # 0: Twisted's default
    path: str = ""  # unix
    mode: str = ""  # unix: the socket file's mode, octal
    domain: str = ""  # systemd: INET, INET6 or UNIX
    index: int | None = None  # systemd: the passed socket's place
    name: str = ""  # systemd: the passed socket's FileDescriptorName

    def endpoint(self) -> str:
        parts = [self.kind]
        if self.kind in ("tcp", "tcp6"):
            parts.append(str(self.port))
            parts += [f"interface={_escape(self.interface)}"] if self.interface else []
        elif self.kind == "unix":
            parts.append(_escape(self.path))
            parts += [f"mode={self.mode}"] if self.mode else []
        else:
            parts.append(f"domain={self.domain}")
            parts.append(f"index={self.index}" if self.index is not None else f"name={self.name}")
        parts += [f"backlog={self.backlog}"] if self.backlog else []
        return ":".join(parts)


class HasListen(Protocol):
    """A config section with a listener: server or metrics."""

    @property
    def listen(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


def listener(section: HasListen) -> Listen:
    """The listener a config section (server, metrics) names. Raises ValueError with the reason."""
    if section.listen:
        return parse_listen(section.listen)
    try:
        family = ipaddress.ip_address(section.host).version
    except ValueError:
        raise ValueError(f"host {section.host!r} must be an IP address") from None
    return Listen("tcp6" if family == 6 else "tcp", port=section.port, interface=section.host)


def parse_listen(text: str) -> Listen:
    """Raises ValueError with a reason fit for one line after the key's name."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"longer than {MAX_LENGTH} characters")
    (kind_key, kind), *rest = _segments(text)
    if kind_key is not None or kind not in KINDS:
        if kind_key is None and kind in REFUSED:
            raise ValueError(REFUSED[kind])
        raise ValueError("must start with tcp:, tcp6:, unix: or systemd: (a Twisted server endpoint string)")
    values: dict[str, str] = {}
    positional = list(POSITIONAL[kind])
    for key, value in rest:
        if key is None:
            if not positional:
                raise ValueError(f"{kind}: too many positional parameters")
            key = positional.pop(0)
        if key not in KEYWORDS[kind]:
            raise ValueError(f"{kind}: unknown parameter {key!r} (allowed: {', '.join(KEYWORDS[kind])})")
        if key in values:
            raise ValueError(f"{kind}: {key} is given twice")
        values[key] = value
    return _CHECK[kind](kind, values)


def _segments(text: str) -> list[tuple[str | None, str]]:
    """Twisted's syntax: ':' separates, '=' names a parameter, '\\' escapes the next character."""
    segments: list[tuple[str | None, str]] = []
    current: list[str] = []
    key: str | None = None
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            segments.append((key, "".join(current)))
            current, key = [], None
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    if escaped:
        raise ValueError("ends in a lone backslash")
    segments.append((key, "".join(current)))
    return segments


def _escape(value: str) -> str:
    return re.sub(r"([\\:=])", r"\\\1", value)


def _number(kind: str, key: str, value: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise ValueError(f"{kind}: {key} must be a number from {low} to {high}")
    return int(value)


def _backlog(kind: str, values: dict[str, str]) -> int:
    return _number(kind, "backlog", values["backlog"], 1, 65535) if "backlog" in values else 0


def _tcp(kind: str, values: dict[str, str]) -> Listen:
    if "port" not in values:
        raise ValueError(f"{kind}: the port is missing ({kind}:8443)")
    port = _number(kind, "port", values["port"], 0, 65535)
    interface = values.get("interface", "")
    if interface:
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(f"{kind}: interface must be an IP address, not a name") from None
        if address.version != (6 if kind == "tcp6" else 4):
            raise ValueError(f"{kind}: interface must be an IPv{6 if kind == 'tcp6' else 4} address")
        interface = str(address)
    return Listen(kind, port=port, interface=interface, backlog=_backlog(kind, values))


def _unix(kind: str, values: dict[str, str]) -> Listen:
    path = values.get("address", "")
    if not path.startswith("/") or len(path.encode()) > MAX_PATH or "\0" in path:
        raise ValueError(f"unix: the socket's path must be absolute and at most {MAX_PATH} bytes")
    mode = values.get("mode", "")
    if mode and not MODE.fullmatch(mode):
        raise ValueError("unix: mode must be octal, as 660")
    return Listen(kind, path=path, mode=mode, backlog=_backlog(kind, values))


def _systemd(kind: str, values: dict[str, str]) -> Listen:
    domain = values.get("domain", "")
    if domain not in DOMAINS:
        raise ValueError(f"systemd: domain must be one of {', '.join(DOMAINS)}")
    if ("index" in values) == ("name" in values):
        raise ValueError("systemd: give exactly one of index and name (the socket unit's FileDescriptorName)")
    if "index" in values:
        return Listen(kind, domain=domain, index=_number(kind, "index", values["index"], 0, MAX_INDEX))
    if not FD_NAME.fullmatch(values["name"]):
        raise ValueError("systemd: name must be 1 to 255 of A-Z a-z 0-9 _ . @ -")
    return Listen(kind, domain=domain, name=values["name"])


_CHECK = {"tcp": _tcp, "tcp6": _tcp, "unix": _unix, "systemd": _systemd}
