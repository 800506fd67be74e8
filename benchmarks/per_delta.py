"""
CPU time of one streamed delta through the router, in one process:

    python -m benchmarks.per_delta [--deltas 20000] [--per-read 1] [--rounds 7] [--tls] [--http] [--multiprocess]
    python -m benchmarks.per_delta --compare OLD_TREE NEW_TREE [--pairs 7] [--per-read 4] [--tls] [--http]

A fake upstream response hands `ChatStream` llama-server's streaming events, `per-read` of
them per read (1: a router that keeps up; several: a saturated one, where a connection has
more than one delta waiting per reactor turn). The client's side is a real twisted.web
Request on an in-memory transport, so HTTP chunking is counted; with --tls, that transport
is Twisted's TLS layer (handshaken in memory, its writes gathered per turn as in the
router), so TLS is counted too. With --http, the upstream's body comes as HTTP/1.1 chunks
through Twisted's HTTP/1.1 client protocol, as on the Agent's connections; without it, the
body's pieces are handed over directly. Sockets are not counted. The clock is fake and
advanced once per read, as a reactor turn would end; coalescing and padding are off, so
every delta is one sealed chunk. Each round is the `process_time` of feeding its deltas,
divided by their number. With --multiprocess, the metrics are kept as the workers of
privllm.workers keep them (prometheus_client's multiprocess mode: a memory-mapped file per
process), so what the metrics cost per chunk there is counted too.

The machine is shared, so two trees are compared in alternating runs (A B A B ...), each
run a fresh process importing privllm from its tree: background load hits both alike.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

# llama-server's events, as privllm.test.synthetic_upstream sends them
EVENT = b'data: {"choices":[{"delta":{"content":" word"},"finish_reason":null}]}\n\n'
ENDING = (
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
)


class _Transport:
    def stopProducing(self) -> None:
        pass


class _Response:
    """What Twisted's Agent hands over: a status and deliverBody."""

    code = 200

    def __init__(self) -> None:
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(_Transport())


class _Upstream:
    context = None

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.pending: Any = Deferred()

    def post_stream(self, path: str, body: Any) -> Any:
        return self.pending

    def count_tokens(self, text: str) -> Any:
        raise AssertionError("context is None: a chat is sent without counting")


def _wire() -> Any:
    from twisted.internet.testing import StringTransport

    class Wire(StringTransport):
        """A TCP connection as far as twisted.web asks (it sets TCP_NODELAY through TLS)."""

        def setTcpNoDelay(self, enabled: bool) -> None:
            pass

    return Wire()


def _tls_pair(clock: Any, channel: Any) -> tuple[Any, Any]:
    """`channel` behind Twisted's TLS layer, handshaken with an in-memory client: the server's
    StringTransport, and the TLS protocol to hand the channel as its transport."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from OpenSSL import crypto
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from privllm.keys.pki import self_signed

    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "localhost", 1, [])
    server_options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key), certificate=crypto.X509.from_cryptography(cert)
    )
    # CertificateOptions and Factory provide the interfaces Twisted's annotations name (as in privllm.tap)
    server = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(lambda: channel), clock=clock)  # type: ignore[arg-type]
    client = TLSMemoryBIOFactory(CertificateOptions(), True, Factory.forProtocol(Protocol), clock=clock)  # type: ignore[arg-type]
    server_end, client_end = server.buildProtocol(None), client.buildProtocol(None)
    server_wire, client_wire = _wire(), StringTransport()
    client_end.makeConnection(client_wire)
    server_end.makeConnection(server_wire)
    for _ in range(10):  # the handshake's round trips
        clock.advance(0)
        to_server, to_client = client_wire.value(), server_wire.value()
        client_wire.clear()
        server_wire.clear()
        if not (to_server or to_client):
            break
        if to_server:
            server_end.dataReceived(to_server)
        if to_client:
            client_end.dataReceived(to_client)
    return server_wire, server_end


def _http_response(upstream: _Upstream) -> Any:
    """Answer the upstream request through Twisted's HTTP/1.1 client protocol (as the Agent
    does): its protocol, whose reads must be HTTP/1.1 chunks of the body."""
    from twisted.internet.testing import StringTransport
    from twisted.web.client import HTTP11ClientProtocol
    from twisted.web.client import Request as ClientRequest
    from twisted.web.http_headers import Headers

    protocol = HTTP11ClientProtocol()
    protocol.makeConnection(StringTransport())
    sent = protocol.request(ClientRequest(b"POST", b"/v1/chat/completions", Headers({b"host": [b"node"]}), None))
    sent.addCallback(upstream.pending.callback)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    return protocol


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def one_round(deltas: int, per_read: int, tls: bool = False, http: bool = False) -> float:
    """Microseconds of CPU per delta for one chat of `deltas` deltas."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    from privllm.config.schema import Config, Privacy
    from privllm.protocol.request import OpenedRequest
    from privllm.upstream.breaker import CircuitBreaker
    from privllm.upstream.pool import Node, NodePool
    from privllm.web.chat import ChatStream, StreamSettings
    from privllm.web.metrics import RouterMetrics

    clock = Clock()
    clock.advance(1000)
    upstream = _Upstream()
    channel = HTTPChannel()
    channel.timeOut = None  # no idle timer on the global reactor
    channel.site = Site(Resource())  # type: ignore[attr-defined]  # what Site.buildProtocol sets
    if tls:
        transport, _ = _tls_pair(clock, channel)  # the TLS layer connects the channel
    else:
        transport = StringTransport()
        channel.makeConnection(transport)
    request = Request(channel, False)
    request.method, request.clientproto, request.uri, request.path = b"POST", b"HTTP/1.1", b"/api/chat", b"/api/chat"
    settings = replace(StreamSettings.from_config(Config()), privacy=Privacy(pad_to=0, coalesce_ms=0), retries=0)
    pool = NodePool([Node("node", upstream, CircuitBreaker(3, 10), healthy=True)])
    stream = ChatStream(request, clock, pool, RouterMetrics(), settings)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    done = stream.start(OpenedRequest(body, os.urandom(32)), os.urandom(32))
    read, ending = EVENT * per_read, ENDING
    if http:
        receive = _http_response(upstream).dataReceived
        read, ending = _chunk(read), _chunk(ending) + b"0\r\n\r\n"
    else:
        response = _Response()
        upstream.pending.callback(response)
        receive = response.protocol.dataReceived
    reads = deltas // per_read
    written = 0
    started = time.process_time()
    for i in range(reads):
        receive(read)
        clock.advance(0)  # the end of a reactor turn: TLS sends what the turn wrote
        if i % 64 == 63:  # keep the in-memory transport small, as a socket's buffer would be
            written += len(transport.value())
            transport.clear()
    elapsed = time.process_time() - started
    receive(ending)
    clock.advance(0)
    written += len(transport.value())
    if not done.called or written < reads * per_read * 80:
        raise RuntimeError("the chat did not stream as expected")
    return 1e6 * elapsed / (reads * per_read)


def spread(figures: list[float]) -> str:
    return f"median {statistics.median(figures):.2f}, min {min(figures):.2f}, max {max(figures):.2f}"


def run_tree(tree: str, args: argparse.Namespace) -> float:
    """One round in a fresh process that imports privllm from `tree`."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    command = [sys.executable, os.path.abspath(__file__), "--deltas", str(args.deltas)]
    command += (
        ["--per-read", str(args.per_read), "--rounds", "1", "--json"]
        + (["--tls"] if args.tls else [])
        + (["--http"] if args.http else [])
        + (["--multiprocess"] if args.multiprocess else [])
    )
    out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True, timeout=600)
    return float(json.loads(out.stdout)["rounds"][0])


def compare(old: str, new: str, args: argparse.Namespace) -> None:
    figures: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.pairs):
        figures["old"].append(run_tree(old, args))
        figures["new"].append(run_tree(new, args))
    diffs = [n - o for o, n in zip(figures["old"], figures["new"], strict=True)]
    print(
        f"us per delta, {'TLS, ' if args.tls else ''}{'upstream HTTP, ' if args.http else ''}{'multiprocess metrics, ' if args.multiprocess else ''}{args.per_read} per read, {args.deltas} deltas, {args.pairs} pairs (old new):"
    )
    print("  " + "  ".join(f"{o:.2f} {n:.2f}" for o, n in zip(figures["old"], figures["new"], strict=True)))
    print(f"old: {spread(figures['old'])}")
    print(f"new: {spread(figures['new'])}")
    print(f"new - old, pair by pair: {spread(diffs)}; new cheaper in {sum(d < 0 for d in diffs)} of {len(diffs)} pairs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deltas", type=int, default=20000)
    p.add_argument("--per-read", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--compare", nargs=2, metavar=("OLD_TREE", "NEW_TREE"))
    p.add_argument("--tls", action="store_true", help="the client's side through Twisted's TLS layer")
    p.add_argument("--http", action="store_true", help="the upstream's body through Twisted's HTTP/1.1 client")
    p.add_argument("--multiprocess", action="store_true", help="metrics in prometheus_client's multiprocess mode")
    p.add_argument("--json", action="store_true", help="print the rounds as JSON")
    args = p.parse_args()
    if args.compare:
        compare(args.compare[0], args.compare[1], args)
        return
    if args.multiprocess:  # read when prometheus_client is first imported, in one_round
        directory = tempfile.mkdtemp(prefix="privllm-bench-metrics-")
        atexit.register(shutil.rmtree, directory, True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    one_round(500, args.per_read, args.tls, args.http)  # warm up: imports, first-call caches
    rounds = [one_round(args.deltas, args.per_read, args.tls, args.http) for _ in range(args.rounds)]
    if args.json:
        print(json.dumps({"rounds": rounds}))
    else:
        print(" ".join(f"{r:.2f}" for r in rounds))
        print(f"us per delta: {spread(rounds)}")


if __name__ == "__main__":
    main()
