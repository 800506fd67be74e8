"""
Test equipment: a synthetic upstream that speaks llama-server's streaming chat format on a
UNIX socket and emits deltas at a chosen rate, so the model is not the bottleneck when the
router's own capacity is measured.

    python -m benchmarks.synthetic_upstream SOCKET --rate 20 --deltas 40
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b'{"status":"ok"}'


class Chat(Resource):
    isLeaf = True

    def __init__(self, rate: float, deltas: int) -> None:
        super().__init__()
        self.rate, self.deltas = rate, deltas

    def render_POST(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        sent = [0]

        def tick() -> None:
            if sent[0] < self.deltas:
                request.write(event({"choices": [{"delta": {"content": " word"}, "finish_reason": None}]}))
                sent[0] += 1
                return
            request.write(event({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
            request.write(event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": self.deltas}}))
            request.write(b"data: [DONE]\n\n")
            loop.stop()
            request.finish()

        loop = LoopingCall(tick)

        def client_gone(_: object) -> None:
            if loop.running:
                loop.stop()

        request.notifyFinish().addErrback(client_gone)
        loop.start(1.0 / self.rate, now=True)
        return NOT_DONE_YET


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("socket")
    p.add_argument("--rate", type=float, default=20.0, help="deltas per second per stream")
    p.add_argument("--deltas", type=int, default=40, help="deltas per answer")
    args = p.parse_args()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    root: Any = Resource()
    root.putChild(b"health", Health())
    v1: Any = Resource()
    root.putChild(b"v1", v1)
    chat: Any = Resource()
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", Chat(args.rate, args.deltas))
    UNIXServerEndpoint(reactor, args.socket).listen(Site(root))
    reactor.run()  # type: ignore[attr-defined,misc]


if __name__ == "__main__":
    main()
