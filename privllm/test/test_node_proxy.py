"""The node role's forward: what the router sees when the node's own llama-server is gone."""

from __future__ import annotations

import io

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..harmony.dialect import HarmonyDialect
from ..node import FORWARDED, NodeProxy
from ..upstream.openai_stream import ChatDialect
from .fakes import GoneLlama, PendingLlama


class Paths(TestCase):
    def test_every_path_a_router_dialect_posts_is_forwarded(self) -> None:
        """A router in harmony mode posts /completion; a node that forwarded only the
        OpenAI-compatible path answered every gpt-oss chat with 404."""
        for dialect in (ChatDialect, HarmonyDialect):
            self.assertIn(dialect.path.encode(), FORWARDED, dialect.__name__)
        self.assertIn(b"/tokenize", FORWARDED, "the router counts long conversations with the node's tokenizer")


class Forward(TestCase):
    def test_a_client_that_left_is_not_answered(self) -> None:
        """The router left before llama-server answered: the forward is cancelled and the
        request, already gone, is not finished."""
        llama = PendingLlama()
        proxy = NodeProxy(llama, ["router"], 1.0)  # type: ignore[arg-type]
        request = DummyRequest([b"v1", b"chat", b"completions"])
        request.content = io.BytesIO(b"{}")  # type: ignore[attr-defined]
        proxy._forward(request, "/v1/chat/completions")  # type: ignore[arg-type]
        request.processingFailed(Failure(ConnectionDone()))
        self.assertTrue(llama.pending.called, "the forward was cancelled")
        self.assertEqual(request.finished, 0)
        self.assertEqual(request.written, [])

    def test_refused_connection_is_a_503(self) -> None:
        """A plain 503 (not a cut connection) lets the router mark this node down at once."""
        proxy = NodeProxy(GoneLlama(), ["router"], 1.0)  # type: ignore[arg-type]
        request = DummyRequest([b"v1", b"chat", b"completions"])
        request.content = io.BytesIO(b"{}")  # type: ignore[attr-defined]
        proxy._forward(request, "/v1/chat/completions")  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(b"".join(request.written), b'{"error":"unavailable"}')
        self.assertEqual(request.finished, 1)
