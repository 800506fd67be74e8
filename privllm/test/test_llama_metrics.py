"""/llama/metrics: llama-server's own metrics passed through, or a 503 when it does not answer."""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..web.llama_metrics import CONTENT_TYPE, LlamaMetrics
from .fakes import MetricsLlama


class PassThrough(TestCase):
    def setUp(self) -> None:
        self.llama = MetricsLlama()
        self.resource = LlamaMetrics(self.llama, 2.0)  # type: ignore[arg-type]
        self.request = DummyRequest([])

    def test_the_text_as_llama_server_gave_it(self) -> None:
        self.resource.render_GET(self.request)  # type: ignore[arg-type]
        self.llama.answer.callback(b"llamacpp:prompt_tokens_total 12\n")
        self.assertEqual(b"".join(self.request.written), b"llamacpp:prompt_tokens_total 12\n")
        self.assertEqual(self.request.responseHeaders.getRawHeaders(b"content-type"), [CONTENT_TYPE])
        self.assertEqual(self.request.finished, 1)

    def test_no_answer_is_a_503(self) -> None:
        self.resource.render_GET(self.request)  # type: ignore[arg-type]
        self.llama.answer.callback(None)
        self.assertEqual(self.request.responseCode, 503)
        self.assertEqual(self.request.finished, 1)

    def test_a_scraper_that_left_is_not_answered(self) -> None:
        self.resource.render_GET(self.request)  # type: ignore[arg-type]
        self.request.processingFailed(Exception("gone"))  # what a lost connection does to notifyFinish
        self.llama.answer.callback(b"x 1\n")
        self.assertEqual(self.request.written, [])
