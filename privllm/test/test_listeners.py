"""Listeners from endpoint strings (config/listen.py, services/listeners.py, services/parent.py),
the proof of work secret, and a router that leaves no socket open once stopped."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from ..client import PrivllmClient
from ..config import ConfigError, load_config
from ..config.listen import Listen, parse_listen
from ..keys.files import KeyFileError
from ..keys.material import IDENTITY_PUB, POW_KEY, TLS_CERT, pow_key
from ..protocol.encoding import b64decode
from ..services.errors import StartError
from ..services.listeners import check_passed, endpoint
from ..services.parent import parent_socket
from ..services.router import Router
from ..workers import inherited_socket
from .helpers import open_sockets
from .stack import free_port
from .synthetic_upstream import Upstream
from .synthetic_upstream import listen as listen_unix


class Parse(TestCase):
    def refused(self, text: str) -> str:
        with self.assertRaises(ValueError) as cm:
            parse_listen(text)
        return str(cm.exception)

    def test_tls_and_the_proxy_protocol_are_privllms_own(self) -> None:
        self.assertIn("server.certificate", self.refused("ssl:8443:privateKey=k.pem"))
        self.assertIn("server.proxy_protocol_from", self.refused("haproxy:tcp:8443"))

    def test_other_kinds_and_parameters_are_refused(self) -> None:
        for text in ("", "udp:53", "kind=tcp:8443", "TCP:8443", "tcp4:1", "stdio:"):
            self.assertIn("must start with", self.refused(text), text)
        self.assertIn("unknown parameter", self.refused("tcp:8443:reuse=1"))
        self.assertIn("given twice", self.refused("tcp:8443:port=9000"))
        self.assertIn("too many", self.refused("tcp:8443:9000"))
        self.assertIn("the port is missing", self.refused("tcp:interface=127.0.0.1"))
        self.assertIn("the port is missing", self.refused("tcp"))

    def test_numbers_and_addresses_are_strict(self) -> None:
        for port in ("65536", "-1", "0x10", "٣", " 1", "1e3"):
            self.assertIn("port must be a number", self.refused(f"tcp:{port}"), port)
        self.assertIn("backlog", self.refused("tcp:1:backlog=0"))
        self.assertIn("not a name", self.refused("tcp:1:interface=localhost"))
        self.assertIn("IPv4", self.refused("tcp:1:interface=\\:\\:1"))
        self.assertIn("IPv6", self.refused("tcp6:1:interface=127.0.0.1"))
        self.assertIn("lone backslash", self.refused("tcp:1\\"))
        self.assertIn("longer than", self.refused("tcp:1:interface=" + "1" * 600))

    def test_unix_and_systemd(self) -> None:
        self.assertIn("absolute", self.refused("unix:relative.sock"))
        self.assertIn("absolute", self.refused("unix:/" + "a" * 200))
        self.assertIn("octal", self.refused("unix:/run/p.sock:mode=999"))
        self.assertIn("domain", self.refused("systemd:index=0"))
        self.assertIn("domain", self.refused("systemd:domain=INET7:index=0"))
        self.assertIn("exactly one", self.refused("systemd:domain=INET"))
        self.assertIn("exactly one", self.refused("systemd:domain=INET:index=0:name=privllm"))
        self.assertIn("name must be", self.refused("systemd:domain=INET:name=a b"))
        self.assertIn("index must be", self.refused("systemd:domain=INET:index=1024"))

    def test_what_twisted_is_given_is_what_was_checked(self) -> None:
        six = parse_listen("tcp6:8443:interface=\\:\\:1:backlog=64")
        self.assertEqual(six, Listen("tcp6", port=8443, interface="::1", backlog=64))
        self.assertEqual(six.endpoint(), "tcp6:8443:interface=\\:\\:1:backlog=64")
        self.assertEqual(parse_listen("tcp:port=0").endpoint(), "tcp:0")
        self.assertEqual(parse_listen("unix:/run/a\\:b.sock:mode=660").endpoint(), "unix:/run/a\\:b.sock:mode=660")
        named = parse_listen("systemd:domain=INET6:name=privllm")
        self.assertEqual(named.endpoint(), "systemd:domain=INET6:name=privllm")
        self.assertEqual(parse_listen("systemd:domain=INET:index=0").endpoint(), "systemd:domain=INET:index=0")


class Configured(TestCase):
    def error(self, **environ: str) -> str:
        with self.assertRaises(ConfigError) as cm:
            load_config("dev", environ={"PRIVLLM_KEYS__STATE_DIR": "/tmp/x", **environ})
        return str(cm.exception)

    def test_a_bad_listen_string_stops_the_load_naming_its_key(self) -> None:
        self.assertTrue(self.error(PRIVLLM_SERVER__LISTEN='"ssl:443"').startswith("config server.listen: TLS is"))
        self.assertTrue(self.error(PRIVLLM_METRICS__LISTEN='"haproxy:tcp:9464"').startswith("config metrics.listen:"))
        self.assertTrue(self.error(PRIVLLM_SERVER__HOST='"example.org"').startswith("config server.host:"))

    def test_the_public_listener_must_be_tcp(self) -> None:
        """A UNIX peer has no IP address: every client would share one address's limits."""
        for text in ("unix:/run/privllm.sock", "systemd:domain=UNIX:name=privllm"):
            self.assertIn("must be TCP", self.error(PRIVLLM_SERVER__LISTEN=f'"{text}"'))
        environ = {"PRIVLLM_KEYS__STATE_DIR": "/tmp/x", "PRIVLLM_METRICS__LISTEN": '"unix:/run/privllm-metrics.sock"'}
        self.assertEqual(load_config("dev", environ=environ).metrics.listen, "unix:/run/privllm-metrics.sock")

    def test_host_and_port_still_work_and_an_ipv6_host_listens_on_tcp6(self) -> None:
        from ..config.listen import listener

        config = load_config("dev", environ={"PRIVLLM_KEYS__STATE_DIR": "/tmp/x", "PRIVLLM_SERVER__HOST": '"::1"'})
        self.assertEqual(listener(config.server).endpoint(), "tcp6:8443:interface=\\:\\:1")
        self.assertEqual(listener(config.metrics).endpoint(), "tcp:9464:interface=127.0.0.1")


class Endpoints(TestCase):
    async def test_an_ipv6_listen_string_listens_on_ipv6(self) -> None:
        where: Any = endpoint(reactor, parse_listen("tcp6:0:interface=\\:\\:1"), "server.listen")
        port = await where.listen(_Nothing())
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().host, "::1")
        with socket.create_connection(("::1", port.getHost().port), timeout=5):
            pass

    def test_systemd_without_a_passed_socket_stops_the_start(self) -> None:
        with self.assertRaises(StartError) as cm:
            endpoint(Clock(), parse_listen("systemd:domain=INET:name=privllm"), "server.listen")
        self.assertIn("config server.listen: systemd passed no socket with name 'privllm'", str(cm.exception))

    def test_a_passed_socket_must_be_of_the_domain_named(self) -> None:
        """Twisted reads each peer's address as the named family: an IPv6 socket read as IPv4
        gave every client one garbled address, so one address's limits for everyone."""
        six = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(six.close)
        six.bind(("::1", 0))
        six.listen()
        check_passed(six.fileno(), socket.AF_INET6, "INET6", "server.listen")
        with self.assertRaises(StartError) as cm:
            check_passed(six.fileno(), socket.AF_INET, "INET", "server.listen")
        self.assertIn("socket of domain INET6", str(cm.exception))
        idle = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # not listening
        self.addCleanup(idle.close)
        with self.assertRaises(StartError):
            check_passed(idle.fileno(), socket.AF_INET6, "INET6", "server.listen")
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        with self.assertRaises(StartError) as cm:
            check_passed(read, socket.AF_INET, "INET", "server.listen")
        self.assertIn("not a socket", str(cm.exception))
        os.fstat(six.fileno())  # the descriptor is left to its owner

    def test_a_router_on_redis_refuses_a_bad_listener_before_redis_answers(self) -> None:
        """Its listener opens once Redis has answered; a listen setting that cannot work must
        stop the start at once, not fail later inside the Redis callback while the process runs."""
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": os.path.abspath(self.mktemp()),
            "PRIVLLM_LLAMA__SPAWN": "false",
            "PRIVLLM_BACKEND__URLS": '["unix:///nonexistent/llama.sock"]',
            "PRIVLLM_STATE__BACKEND": '"redis"',
            "PRIVLLM_STATE__URL": '"unix:///nonexistent/redis.sock"',
            "PRIVLLM_SERVER__LISTEN": '"systemd:domain=INET:name=privllm"',
        }
        with self.assertRaises(StartError) as cm:
            Router(load_config("dev", environ=environ), MemoryReactorClock())
        self.assertIn("systemd passed no socket", str(cm.exception))


class _Nothing:
    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: Any) -> None:
        return None


class ParentSocket(TestCase):
    """The socket a parent of workers holds: opened, or passed by systemd and checked."""

    def test_tcp6(self) -> None:
        sock = parent_socket(parse_listen("tcp6:0:interface=\\:\\:1"), Clock())
        self.addCleanup(sock.close)
        self.assertEqual((sock.family, sock.getsockname()[0]), (socket.AF_INET6, "::1"))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)

    def test_unix_and_a_missing_systemd_socket_are_refused(self) -> None:
        for text in ("unix:/tmp/privllm-test.sock", "systemd:domain=UNIX:index=0"):
            with self.assertRaises(StartError) as cm:
                parent_socket(parse_listen(text), Clock())
            self.assertIn("more than one worker needs", str(cm.exception))
        with self.assertRaises(StartError) as cm:
            parent_socket(parse_listen("systemd:domain=INET:index=0"), Clock())  # none passed to the tests
        self.assertIn("systemd passed no socket with index 0", str(cm.exception))

    def test_only_a_listening_tcp_socket_is_adopted(self) -> None:
        for family, kind, listening in (
            (socket.AF_INET, socket.SOCK_DGRAM, False),
            (socket.AF_INET, socket.SOCK_STREAM, False),
            (socket.AF_UNIX, socket.SOCK_STREAM, True),
        ):
            sock = socket.socket(family, kind)
            self.addCleanup(sock.close)
            if listening:
                sock.bind(os.path.join(tempfile.mkdtemp(dir=os.path.abspath(".")), "s"))
                sock.listen()
            with self.assertRaises(ValueError):
                inherited_socket(sock.fileno())
            os.fstat(sock.fileno())  # a refused descriptor is left to its owner (this raises once it is closed)
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        with self.assertRaises(ValueError):  # a unit passing a FIFO or a file: one line, not a traceback
            inherited_socket(read)
        good = socket.socket()
        good.bind(("127.0.0.1", 0))
        good.listen()
        adopted = inherited_socket(os.dup(good.fileno()))
        good.close()
        self.addCleanup(adopted.close)
        self.assertFalse(adopted.get_inheritable())


class PowKey(TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, POW_KEY)

    def test_made_once_private_and_never_replaced(self) -> None:
        with self.assertRaises(KeyFileError):
            pow_key(self.dir, create=False)  # a worker never makes it
        first = pow_key(self.dir)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual((len(first), pow_key(self.dir), pow_key(self.dir, create=False)), (32, first, first))

    def test_a_link_or_a_short_key_is_refused(self) -> None:
        os.symlink("/etc/passwd", self.path)
        with self.assertRaises(KeyFileError):
            pow_key(self.dir)
        os.unlink(self.path)
        with open(self.path, "wb") as f:
            f.write(b"short")
        os.chmod(self.path, 0o600)
        with self.assertRaises(KeyFileError):
            pow_key(self.dir)


class NothingOutlivesAStop(TestCase):
    """A router built in this process, a chat through it and a scrape of its metrics, then a stop:
    every socket it opened (listeners, the connections it accepted, its pool to the upstream)
    is closed."""

    timeout = 60

    async def test_every_socket_is_closed(self) -> None:
        directory = tempfile.mkdtemp(prefix="privllm-fd-")  # a UNIX socket path must be short
        self.addCleanup(shutil.rmtree, directory, True)
        upstream = Upstream(listen_unix(os.path.join(directory, "up.sock")), rate=200, deltas=3).start()
        self.addCleanup(upstream.stop)
        port, metrics_port = free_port(), free_port()
        state = os.path.join(directory, "state")
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": state,
            "PRIVLLM_SERVER__PORT": str(port),
            "PRIVLLM_METRICS__PORT": str(metrics_port),
            "PRIVLLM_LLAMA__SPAWN": "false",
            "PRIVLLM_BACKEND__URLS": f'["unix://{directory}/up.sock"]',
            "PRIVLLM_BACKEND__HEALTH_INTERVAL": "0.2",
        }
        before = open_sockets()
        router = Router(load_config("dev", environ=environ), reactor)
        router.service.startService()
        for _ in range(100):
            if router.pool.nodes[0].healthy:
                break
            await deferLater(reactor, 0.1)
        with open(os.path.join(state, IDENTITY_PUB)) as f:
            pin = b64decode(f.read().strip(), 32)
        with open(os.path.join(state, TLS_CERT), "rb") as f:
            cert = f.read()
        client = PrivllmClient(reactor, f"https://127.0.0.1:{port}", pin, os.urandom(32), cert)
        self.addCleanup(client.close)
        result = await client.chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        self.assertEqual(result.finish_reason, "stop")
        scrape = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{metrics_port}/metrics".encode())
        self.assertIn(b"privllm_", await readBody(scrape))
        self.assertGreater(len(open_sockets() - before), 3, "listeners, the client's and the pool's connections")
        await router.service.stopService()
        for _ in range(50):  # the peers' ends close a turn or two after the router's
            if open_sockets() == before:
                break
            await deferLater(reactor, 0.1)
        self.assertEqual(open_sockets() - before, set())
