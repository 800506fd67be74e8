from __future__ import annotations

from twisted.trial.unittest import TestCase

from ..protocol.sse import SSEError, SSEEvent, SSEParser, encode_event

STREAM = (
    b": comment\r\n"
    b'event: init\r\ndata: {"a":1}\r\n\r\n'
    b"data: first\ndata: second\n\n"
    b"event: chunk\rdata:no-space\r\r"
    b"id: 7\nretry: 10\ndata: caf\xc3\xa9 \xf0\x9f\x8c\x8d\n\n"
    b"data\n\n"
    b"event: empty\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("init", '{"a":1}'),
    SSEEvent("message", "first\nsecond"),
    SSEEvent("chunk", "no-space"),
    SSEEvent("message", "café 🌍"),
    SSEEvent("message", ""),
    SSEEvent("message", "[DONE]"),
]


class Parsing(TestCase):
    def test_whole(self) -> None:
        self.assertEqual(SSEParser().feed(STREAM), EXPECTED)

    def test_every_split_point(self) -> None:
        for i in range(len(STREAM) + 1):
            for j in range(i, len(STREAM) + 1, 7):
                p = SSEParser()
                events = p.feed(STREAM[:i]) + p.feed(STREAM[i:j]) + p.feed(STREAM[j:])
                self.assertEqual(events, EXPECTED, (i, j))

    def test_line_feeds_only(self) -> None:
        """The LF-only fast path (every upstream delta) agrees with the general one, at any split."""
        stream = STREAM.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        for i in range(len(stream) + 1):
            p = SSEParser()
            self.assertEqual(p.feed(stream[:i]) + p.feed(stream[i:]), EXPECTED, i)

    def test_byte_by_byte(self) -> None:
        p = SSEParser()
        events = []
        for b in STREAM:
            events += p.feed(bytes([b]))
        self.assertEqual(events, EXPECTED)

    def test_line_limit(self) -> None:
        p = SSEParser(max_line=100)
        self.assertRaises(SSEError, p.feed, b"data: " + b"x" * 200)

    def test_event_limit(self) -> None:
        p = SSEParser(max_event=100)
        self.assertRaises(SSEError, p.feed, b"data: " + b"x" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")

    def test_limits_hold_for_whole_events(self) -> None:
        """A one-line event that arrives whole is still held to the size limits."""
        self.assertRaises(SSEError, SSEParser(max_event=100).feed, b"data: " + b"x" * 150 + b"\n\n")
        self.assertRaises(SSEError, SSEParser(max_line=100).feed, b"data: " + b"x" * 150 + b"\n\n")
        self.assertEqual(
            SSEParser(max_event=100).feed(b"data: " + b"x" * 50 + b"\n\n"), [SSEEvent("message", "x" * 50)]
        )

    def test_bad_utf8(self) -> None:
        self.assertRaises(SSEError, SSEParser().feed, b"data: \xff\n\n")

    def test_encode_round_trip(self) -> None:
        self.assertEqual(SSEParser().feed(encode_event("chunk", "abc")), [SSEEvent("chunk", "abc")])
        self.assertRaises(ValueError, encode_event, "chunk", "a\nb")
