"""
A real redis-server for tests (Debian's, from scripts/bootstrap.sh): on a UNIX socket in a
temporary directory, keeping nothing on disk, evicting nothing, optionally with an ACL user
for privllm and a TLS port. The test's own admin connection (`command`) is a small blocking
RESP client over the socket as the default user, to set up and inspect Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from ..keys.files import write_secret

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
USER = "privllm"
# The ACL line docs/deployment.md gives operators.
ACL_RULES = "~privllm:* -@all +@read +@write +@scripting -@dangerous +config|get +info +ping"

Reply = int | bytes | None | list["Reply"]


class RedisError(Exception):
    pass


def available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


class RedisServer:
    def __init__(self, password: str | None = None, tls: tuple[str, str, str] | None = None) -> None:
        """`tls`: (certificate, key, CA) for a TLS port on 127.0.0.1 besides the socket."""
        self.directory = tempfile.mkdtemp(prefix="privllm-redis-")
        self.socket = os.path.join(self.directory, "redis.sock")
        self.password = password
        self.tls = tls
        self.tls_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()
        self.start()

    def _write_config(self) -> None:
        lines = [
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            "save ''",
            "appendonly no",
            "maxmemory-policy noeviction",
            f"dir {self.directory}",
            "user default on nopass ~* &* +@all",
        ]
        if self.password is not None:
            lines.append(f"user {USER} on >{self.password} {ACL_RULES}")
        if self.tls is not None:
            certificate, key, ca = self.tls
            self.tls_port = free_port()
            lines += [
                f"tls-port {self.tls_port}",
                "bind 127.0.0.1",
                f"tls-cert-file {certificate}",
                f"tls-key-file {key}",
                f"tls-ca-cert-file {ca}",
                "tls-auth-clients no",
            ]
        with open(os.path.join(self.directory, "redis.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        """Start a fresh, empty server on the same socket (and TLS port)."""
        log = open(os.path.join(self.directory, "redis.log"), "ab")
        self.process = subprocess.Popen(
            [REDIS_SERVER, os.path.join(self.directory, "redis.conf")], stdout=log, stderr=log, cwd=self.directory
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == b"PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start: see " + self.directory + "/redis.log")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def state_section(self) -> dict[str, str]:
        """A router's `[state]` for this server: its socket, the ACL user, a password file (0600)."""
        assert self.password is not None, "made with a password"
        password_file = os.path.join(self.directory, "password")
        if not os.path.exists(password_file):
            write_secret(password_file, self.password.encode() + b"\n")
        return {"backend": "redis", "url": self.url, "user": USER, "password_file": password_file}

    def command(self, *args: str | bytes | int) -> Reply:
        """One command as the default user; raises RedisError on an error reply."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.socket)
            out = b"*%d\r\n" % len(args)
            for arg in args:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out += b"$%d\r\n%s\r\n" % (len(data), data)
            s.sendall(out)
            return _read(s.makefile("rb"))

    def dump(self) -> bytes:
        """Every key and value in Redis, concatenated: what someone who reads Redis sees."""
        seen = []
        cursor = b"0"
        for _ in range(10_000):
            reply = self.command("SCAN", cursor, "COUNT", 1000)
            assert isinstance(reply, list) and isinstance(reply[0], bytes) and isinstance(reply[1], list)
            cursor = reply[0]
            for key in reply[1]:
                assert isinstance(key, bytes)
                seen.append(key)
                kind = self.command("TYPE", key)
                if kind == b"zset":
                    seen.append(_flatten(self.command("ZRANGE", key, 0, -1, "WITHSCORES")))
                elif kind == b"string":
                    seen.append(_flatten(self.command("GET", key)))
                else:
                    raise AssertionError(f"unexpected type {kind!r}")
            if cursor == b"0":
                return b"\n".join(seen)
        raise AssertionError("SCAN did not end")


def _flatten(reply: Reply) -> bytes:
    if isinstance(reply, list):
        return b"\n".join(_flatten(r) for r in reply)
    return b"" if reply is None else reply if isinstance(reply, bytes) else str(reply).encode()


def _read(f: object) -> Reply:
    line = f.readline()  # type: ignore[attr-defined]
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return bytes(rest)
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data: bytes = f.read(n + 2)[:-2]  # type: ignore[attr-defined]
        return data
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise RedisError(f"unexpected reply {line!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
