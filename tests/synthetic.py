"""
Test equipment: a synthetic upstream on a UNIX socket that speaks llama-server's health and
streaming formats, and fails on purpose: one delta, then the connection is cut.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"ok"}'


class _BrokenChat(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render_POST(self, request: Request) -> object:
        self.requests += 1
        request.setHeader(b"content-type", b"text/event-stream")
        delta = {"choices": [{"delta": {"content": "partial answer"}, "finish_reason": None}]}
        request.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
        transport = request.channel.transport if request.channel else None
        if transport is not None:
            # Cut the connection once the delta is out: the failure comes mid-answer.
            from twisted.internet import reactor

            reactor.callLater(0.2, transport.abortConnection)  # type: ignore[attr-defined]
        return NOT_DONE_YET


def broken_upstream(reactor: object, path: str) -> tuple[Deferred[IListeningPort], _BrokenChat]:
    """Listen on `path`; return (the listening Deferred, the chat resource that counts requests)."""
    root = Resource()
    chat = _BrokenChat()
    root.putChild(b"health", _Health())
    v1 = Resource()
    root.putChild(b"v1", v1)
    completions = Resource()
    v1.putChild(b"chat", completions)
    completions.putChild(b"completions", chat)
    return UNIXServerEndpoint(reactor, path).listen(Site(root)), chat


class _Replay(Resource):
    """`POST /completion`: answers with recorded streaming events; keeps the prompts it was sent."""

    isLeaf = True

    def __init__(self, events: list[bytes]) -> None:
        super().__init__()
        self.events = events
        self.prompts: list[list[int]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.prompts.append(json.loads(request.content.read())["prompt"])
        request.setHeader(b"content-type", b"text/event-stream")
        return b"".join(self.events)


def replaying_upstream(reactor: object, path: str, events: list[bytes]) -> tuple[Deferred[IListeningPort], _Replay]:
    """A llama-server stand-in for gpt-oss: health, and `/completion` replaying `events`."""
    root = Resource()
    replay = _Replay(events)
    root.putChild(b"health", _Health())
    root.putChild(b"completion", replay)
    return UNIXServerEndpoint(reactor, path).listen(Site(root)), replay
