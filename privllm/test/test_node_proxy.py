"""The node role's forward: what the router sees when the node's own llama-server is gone."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..node import NodeProxy


class GoneLlama:
    """Test equipment: a node-local llama-server that refuses every connection."""

    def post_stream(self, path: str, body: bytes) -> Deferred[Any]:
        return fail(ConnectionRefusedError())


class Forward(TestCase):
    def test_refused_connection_is_a_503(self) -> None:
        """A plain 503 (not a cut connection) lets the router mark this node down at once."""
        proxy = NodeProxy(GoneLlama(), ["router"], 1.0)  # type: ignore[arg-type]
        request = DummyRequest([b"v1", b"chat", b"completions"])
        request.content = io.BytesIO(b"{}")  # type: ignore[attr-defined]
        proxy._forward(request, "/v1/chat/completions")  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(b"".join(request.written), b'{"error":"unavailable"}')
        self.assertEqual(request.finished, 1)
