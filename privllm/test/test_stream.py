from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from ..protocol.stream import StreamError, StreamKeys, StreamOpener, StreamSealer, StreamStateError, derive_stream_keys


def pair() -> tuple[StreamSealer, StreamOpener]:
    keys = derive_stream_keys(os.urandom(32), os.urandom(32), os.urandom(32))
    return StreamSealer(keys), StreamOpener(keys)


DONE = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}


class Sealing(TestCase):
    def test_round_trip(self) -> None:
        sealer, opener = pair()
        texts = ["Hel", "lo ", "wörld 🌍"]
        for t in texts:
            chunk, final = opener.open(sealer.seal({"type": "delta", "text": t}))
            self.assertEqual((chunk["text"], final), (t, False))
        chunk, final = opener.open(sealer.seal(DONE, final=True))
        self.assertEqual((chunk, final), (DONE, True))
        opener.end()

    def test_key_schedule_inputs_checked(self) -> None:
        self.assertRaises(ValueError, derive_stream_keys, b"x" * 31, os.urandom(32), os.urandom(32))
        self.assertRaises(ValueError, derive_stream_keys, os.urandom(32), os.urandom(32), os.urandom(16))

    def test_truncation_detected(self) -> None:
        sealer, opener = pair()
        opener.open(sealer.seal({"type": "delta", "text": "a"}))
        with self.assertRaises(StreamError) as cm:
            opener.end()
        self.assertEqual(cm.exception.kind, "truncated")

    def test_dropped_final_then_end(self) -> None:
        sealer, opener = pair()
        sealer.seal(DONE, final=True)  # never delivered
        self.assertRaises(StreamError, opener.end)

    def test_reordering_detected(self) -> None:
        sealer, opener = pair()
        first = sealer.seal({"type": "delta", "text": "a"})
        second = sealer.seal({"type": "delta", "text": "b"})
        with self.assertRaises(StreamError) as cm:
            opener.open(second)
        self.assertEqual(cm.exception.kind, "tampered")
        self.assertRaises(StreamError, opener.open, first)  # the reader stopped

    def test_chunk_after_final_rejected(self) -> None:
        sealer, opener = pair()
        opener.open(sealer.seal(DONE, final=True))
        self.assertRaises(StreamStateError, sealer.seal, {"type": "delta", "text": "x"})
        with self.assertRaises(StreamError) as cm:
            opener.open("AAAA")
        self.assertEqual(cm.exception.kind, "after_final")

    def test_final_flag_cannot_be_moved(self) -> None:
        # A delta sealed as final, or a done sealed as non-final, is refused by the reader.
        sealer, opener = pair()
        self.assertRaises(StreamError, opener.open, sealer.seal({"type": "delta", "text": "x"}, final=True))
        sealer, opener = pair()
        self.assertRaises(StreamError, opener.open, sealer.seal(DONE, final=False))

    def test_tampering_detected(self) -> None:
        sealer, opener = pair()
        sealed = bytearray(sealer.seal({"type": "delta", "text": "abc"}).encode())
        sealed[5] = ord("A") if sealed[5] != ord("A") else ord("B")
        self.assertRaises(StreamError, opener.open, sealed.decode())

    def test_other_stream_key_rejected(self) -> None:
        sealer, _ = pair()
        _, opener = pair()
        self.assertRaises(StreamError, opener.open, sealer.seal({"type": "delta", "text": "x"}))

    def test_padding_stripped(self) -> None:
        keys = StreamKeys(os.urandom(32), os.urandom(12))
        sealer, opener = StreamSealer(keys, pad_to=64), StreamOpener(keys)
        sealed = sealer.seal({"type": "delta", "text": "a"})
        self.assertEqual(len(__import__("base64").b64decode(sealed)), 64 + 16)
        self.assertEqual(opener.open(sealed)[0]["text"], "a")
