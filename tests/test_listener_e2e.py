"""
The public listener as a hostile client meets it, on the real daemon: testssl.sh's findings
(point 15) and slow clients against the read deadline (point 8); and where it listens, by
configuration (server.listen): a socket systemd passed (Debian's systemd-socket-activate, as a
.socket unit would), one process or a parent of workers, and IPv6. The daemon here needs no
model: its backend is a socket nobody listens on, and only the listener is under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import h2.config
import h2.connection
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from privllm.client import PrivllmClient
from privllm.test.redis_server import RedisServer
from privllm.test.stack import Daemon, shared

READ_TIMEOUT = 2.0
MARGIN = 1.0  # the reactor's turn, TLS and a loaded machine; far below the 60 s idle timeout
LISTENER = {
    "llama": {"spawn": False},
    "backend": {"urls": ["unix:///nonexistent/llama.sock"]},
    "server": {"request_read_timeout": READ_TIMEOUT},
}
TESTSSL = "/usr/bin/testssl"
TESTSSL_TIMEOUT = 180
# What Mozilla's intermediate profile allows, by IANA name: TLS 1.3's suites, and on TLS 1.2
# ECDHE with AES-GCM or ChaCha20-Poly1305.
ALLOWED_SUITE = re.compile(
    r"TLS_(ECDHE_(ECDSA|RSA)_WITH_)?(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)"
)


def listener() -> Daemon:
    return shared("listener", LISTENER, wait_ready=False)


def testssl(port: int, json_path: str) -> list[dict[str, Any]]:
    """Protocols, every cipher, BEAST, LUCKY13 and headers; offline (no DNS, no phoning out)."""
    if not os.access(TESTSSL, os.X_OK):
        raise AssertionError(f"{TESTSSL} is missing: install Debian's testssl.sh (scripts/bootstrap.sh does)")
    argv = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--ip", "127.0.0.1"]
    argv += ["--connect-timeout", "5", "--openssl-timeout", "5", "--jsonfile", json_path]
    argv += ["--protocols", "--each-cipher", "--beast", "--lucky13", "--headers", f"https://127.0.0.1:{port}/"]
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=TESTSSL_TIMEOUT, check=False)
    with open(json_path) as f:
        findings: list[dict[str, Any]] = json.load(f)
    return findings


class TestSSL(TestCase):
    timeout = TESTSSL_TIMEOUT + 60

    def test_only_what_it_must(self) -> None:
        daemon = listener()
        started = time.monotonic()
        findings = testssl(daemon.port, os.path.join(os.path.abspath(self.mktemp()) + ".json"))
        elapsed = time.monotonic() - started
        by_id = {f["id"]: f for f in findings}
        for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            self.assertTrue(by_id[old]["finding"].startswith("not offered"), by_id[old])
        for current in ("TLS1_2", "TLS1_3"):
            self.assertTrue(by_id[current]["finding"].startswith("offered"), by_id[current])
        # One finding per offered suite, its IANA name last: "xc02b  ECDHE-ECDSA-AES128-GCM-SHA256 ...
        # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".
        offered = {f["finding"].split()[-1] for f in findings if f["id"].startswith("cipher_x")}
        self.assertEqual([s for s in offered if not ALLOWED_SUITE.fullmatch(s)], [])
        self.assertIn("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", offered)  # TLS 1.2 is still there
        self.assertIn("TLS_AES_256_GCM_SHA384", offered)
        self.assertEqual((by_id["LUCKY13"]["severity"], by_id["LUCKY13"]["finding"]), ("OK", "not vulnerable"))
        self.assertEqual(by_id["BEAST"]["severity"], "OK")
        self.assertEqual(by_id["HSTS_time"]["severity"], "OK", by_id["HSTS_time"])
        self.assertLess(elapsed, TESTSSL_TIMEOUT)


def connect(port: int, alpn: list[str] | None = None) -> tuple[ssl.SSLSocket, float]:
    daemon = listener()
    context = daemon.ssl_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    accepted = time.monotonic()
    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    if alpn:
        assert conn.selected_alpn_protocol() == alpn[0]
    return conn, accepted


def closed_after(conn: socket.socket, since: float, trickle: bytes = b"") -> float:
    """Seconds from `since` until the peer closes; `trickle` is sent one byte a second meanwhile."""
    conn.settimeout(0.05)
    deadline = since + READ_TIMEOUT + 10
    next_byte = time.monotonic()
    while time.monotonic() < deadline:
        if trickle and time.monotonic() >= next_byte:
            try:
                conn.sendall(trickle[:1])
            except OSError:
                break
            trickle, next_byte = trickle[1:], next_byte + 1
        try:
            if conn.recv(65536) == b"":
                break
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except OSError:
            break
    return time.monotonic() - since


class SlowClients(TestCase):
    timeout = 120

    def assertOnTime(self, seconds: float) -> None:
        self.assertGreaterEqual(seconds, READ_TIMEOUT - 0.1)
        self.assertLess(seconds, READ_TIMEOUT + MARGIN)

    def test_request_line_one_byte_a_second(self) -> None:
        conn, accepted = connect(listener().port)
        self.addCleanup(conn.close)
        self.assertOnTime(closed_after(conn, accepted, b"GET /health HTTP/1.1" * 2))

    def test_silent_tcp_connection(self) -> None:
        raw = socket.create_connection(("127.0.0.1", listener().port), timeout=10)
        self.addCleanup(raw.close)
        self.assertOnTime(closed_after(raw, time.monotonic()))

    def test_idle_after_a_kept_alive_answer(self) -> None:
        conn, _ = connect(listener().port)
        self.addCleanup(conn.close)
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b'{"status":"ok"}' not in reply:
            reply += conn.recv(65536)
        answered = time.monotonic()
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "))
        self.assertOnTime(closed_after(conn, answered))

    def test_http2_silent(self) -> None:
        conn, accepted = connect(listener().port, ["h2"])
        self.addCleanup(conn.close)
        self.assertOnTime(closed_after(conn, accepted))

    def test_http2_headers_trickled(self) -> None:
        conn, accepted = connect(listener().port, ["h2"])
        self.addCleanup(conn.close)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        conn.sendall(client.data_to_send())
        headers = [(":method", "GET"), (":path", "/health"), (":scheme", "https"), (":authority", "x")]
        client.send_headers(1, headers, end_stream=True)
        self.assertOnTime(closed_after(conn, accepted, client.data_to_send()))


PIECES, EVERY = 8, 0.5  # an answer that lasts twice the read deadline


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b'{"status":"ok"}'


class _SlowChat(Resource):
    """An upstream that answers one word every EVERY seconds, as a long generation does."""

    isLeaf = True

    def render_POST(self, request: Any) -> object:
        request.setHeader(b"content-type", b"text/event-stream")
        gone: list[object] = []
        request.notifyFinish().addBoth(gone.append)

        def send(n: int) -> None:
            if gone:
                return
            if n < PIECES:
                delta = {"choices": [{"delta": {"content": f"word{n} "}, "finish_reason": None}]}
                request.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
                reactor.callLater(EVERY, send, n + 1)  # type: ignore[attr-defined]
                return
            end = {
                "choices": [{"delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n},
            }
            request.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
            request.finish()

        send(0)
        return NOT_DONE_YET


class LongAnswers(TestCase):
    timeout = 120

    async def test_streamed_answer_outlives_the_read_deadline(self) -> None:
        directory = tempfile.mkdtemp(prefix="privllm-up-")  # a UNIX socket path must be short
        self.addCleanup(shutil.rmtree, directory, True)
        socket_path = os.path.join(directory, "up.sock")
        root = Resource()
        root.putChild(b"health", _Health())
        root.putChild(b"v1", v1 := Resource())
        v1.putChild(b"chat", chat := Resource())
        chat.putChild(b"completions", _SlowChat())
        port = await UNIXServerEndpoint(reactor, socket_path).listen(Site(root))
        self.addCleanup(port.stopListening)
        sections = {**LISTENER, "backend": {"urls": [f"unix://{socket_path}"]}}
        daemon = Daemon(sections, name="long")
        self.addCleanup(daemon.cleanup)
        daemon.start(wait=False)
        await daemon.ready(reactor)
        client = PrivllmClient(reactor, daemon.url, daemon.pin(), os.urandom(32), daemon.cert())
        self.addCleanup(client.close)
        started = time.monotonic()
        result = await client.chat({"messages": [{"role": "user", "content": "Talk slowly."}], "max_tokens": 16})
        self.assertGreater(time.monotonic() - started, 1.5 * READ_TIMEOUT)
        self.assertEqual(result.text.split(), [f"word{n}" for n in range(PIECES)])
        self.assertEqual(result.finish_reason, "stop")


SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"
STARTED = 60.0  # seconds: twistd's start, and a worker's (a parent of workers starts them in turn)


def activated(sections: dict[str, dict[str, Any]], name: str) -> Daemon:
    """A daemon started by systemd-socket-activate on its port, the socket named "privllm" (as
    FileDescriptorName= does). The tool passes only the variables named with -E, and starts the
    daemon at the first connection, which waits in the socket's queue meanwhile."""
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        raise AssertionError(f"{SOCKET_ACTIVATE} is missing: install Debian's systemd (scripts/bootstrap.sh does)")
    listen = {"listen": "systemd:domain=INET:name=privllm"}
    daemon = Daemon({**sections, "server": {**sections.get("server", {}), **listen}}, name=name)
    passed = sorted({*os.environ, "TMPDIR", "PYTHONUNBUFFERED"} - {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"})
    daemon.prefix = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{daemon.port}", "--fdname=privllm"]
    daemon.prefix += [arg for variable in passed for arg in ("-E", variable)]
    return daemon


def answered(daemon: Daemon, path: str, host: str = "127.0.0.1") -> int:
    """The status of GET `path` once the daemon answers on `host` (bounded by STARTED). Its TLS
    certificate is made when it starts, which a socket-activated daemon does at the first
    connection: a plain TCP connection is made first, as any client's would be."""
    assert daemon.process is not None
    deadline = time.monotonic() + STARTED
    while time.monotonic() < deadline:
        assert daemon.process.poll() is None, daemon.log()
        try:
            socket.create_connection((host.strip("[]"), daemon.port), timeout=5).close()
            context = daemon.ssl_context()
            with urllib.request.urlopen(f"https://{host}:{daemon.port}{path}", context=context, timeout=5) as r:
                return int(r.status)
        except (OSError, ssl.SSLError):
            time.sleep(0.2)
    raise AssertionError(f"no answer in {STARTED} s:\n{daemon.log()}")


def listening_sockets(pid: int) -> set[str]:
    """The inodes of the TCP sockets in LISTEN state that process `pid` holds."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    listening.add(f"socket:[{fields[9]}]")
    return held & listening


class SocketActivation(TestCase):
    timeout = 180

    def test_one_process_serves_on_the_socket_systemd_passed(self) -> None:
        daemon = activated(LISTENER, "activated")
        self.addCleanup(daemon.cleanup)
        daemon.start(wait=False)
        self.assertEqual(answered(daemon, "/api/pubkey"), 200)
        self.assertNotEqual(json.loads(daemon.get("/api/pubkey")[2])["keys"], [])
        assert daemon.process is not None
        # exec'd in place of the tool: the passed socket is the one it holds, and it opened none
        self.assertEqual(len(listening_sockets(daemon.process.pid)), 2, "the passed socket and the metrics one")
        self.assertNotIn("Traceback", daemon.log())

    def test_a_parent_of_workers_hands_the_passed_socket_to_its_workers(self) -> None:
        redis = RedisServer()
        self.addCleanup(redis.close)
        redis.command("SET", "privllm:fresh", "1")
        shared_state = {"state": {"backend": "redis", "url": redis.url}, "replay": {"future_skew": 1}}
        daemon = activated({**LISTENER, **shared_state, "server": {**LISTENER["server"], "workers": 2}}, "activated2")
        self.addCleanup(daemon.cleanup)
        daemon.start(wait=False)
        self.assertEqual(answered(daemon, "/api/pubkey"), 200)
        assert daemon.process is not None
        pid = daemon.process.pid
        passed = listening_sockets(pid)
        deadline = time.monotonic() + STARTED
        while time.monotonic() < deadline:  # a worker adopts the socket once its first probe is done
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(p) for p in f.read().split()]
            if len(children) == 2 and all(listening_sockets(child) & passed for child in children):
                break
            time.sleep(0.2)
        self.assertEqual(len(children), 2)
        self.assertTrue(all(listening_sockets(pid) & passed for pid in children), "both workers hold it")
        self.assertEqual(len(passed), 2, "the passed socket and the metrics one: the parent opened no other")


class IPv6(TestCase):
    timeout = 120

    def test_a_tcp6_listen_string_serves_on_ipv6_loopback(self) -> None:
        daemon = Daemon(LISTENER, name="ipv6")
        self.addCleanup(daemon.cleanup)
        daemon.environ["PRIVLLM_SERVER__LISTEN"] = f"tcp6:{daemon.port}:interface=\\:\\:1"  # its port, on ::1
        daemon.start(wait=False)
        self.assertEqual(answered(daemon, "/api/pubkey", "[::1]"), 200)
        with self.assertRaises(OSError):  # not on IPv4
            socket.create_connection(("127.0.0.1", daemon.port), timeout=5).close()
