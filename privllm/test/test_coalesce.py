"""The coalescer on its own: its size arithmetic must match what the sealer will encode."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from ..protocol.coalesce import Coalescer, delta_json, delta_size
from ..protocol.encoding import dumps

TEXTS = ["", "a", ' "quoted" \\ back', "tab\tnew\nline\x01\x1f", "café 🌍", "\u2028\u2029", "x" * 300]


class Sizes(TestCase):
    def test_delta_json_is_dumps(self) -> None:
        for text in TEXTS:
            self.assertEqual(delta_json(text), dumps({"type": "delta", "text": text}), text)
            self.assertEqual(delta_size(text), len(dumps({"type": "delta", "text": text})), text)

    def test_chunks_stay_in_one_bucket(self) -> None:
        c = Coalescer(0.05, 64)
        self.assertEqual(c.add("first", 0.0), ["first"])
        out = []
        for i in range(40):
            out += c.add("é", i * 0.001)
        out += [c.take() or ""]
        self.assertEqual("".join(out), "é" * 40)
        self.assertTrue(all(delta_size(piece) <= 64 for piece in out), [delta_size(p) for p in out])
