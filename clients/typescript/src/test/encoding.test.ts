/** The strict encodings, including the fallbacks used where Hermes lacks TextEncoder/TextDecoder, and SSE framing. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { b64decode, b64encode, canonicalJson, fromUtf8, fromUtf8Js, isScalarText, parseBounded, utf8, utf8Js } from "../encoding.js";
import { ProtocolError } from "../errors.js";
import { SseParser } from "../sse.js";

test("base64: canonical standard form only, exact lengths", () => {
  for (let n = 0; n < 8; n++) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => i * 37 + 200);
    assert.equal(b64encode(bytes), Buffer.from(bytes).toString("base64"));
    assert.deepEqual(b64decode(b64encode(bytes)), bytes);
  }
  for (const bad of ["QQ", "QR==", "Q===", "QQ=A", "QQ==QQ==", "-_8=", "QUJD\n", "QUJD ", 42, null]) {
    assert.throws(() => b64decode(bad), ProtocolError, String(bad));
  }
  assert.throws(() => b64decode("QUJD", 2), ProtocolError);
  assert.throws(() => b64decode("QUJDRA==", undefined, 3), ProtocolError);
});

test("UTF-8: the JS fallbacks agree with TextEncoder/TextDecoder and refuse what they refuse", () => {
  for (const text of ["", "plain", "Grüße", "€", "🪐 and 𝄞", "\u0000\u007f\u0080\u07ff\u0800\uffff"]) {
    assert.deepEqual(utf8Js(text), utf8(text));
    assert.equal(fromUtf8Js(utf8(text)), text);
  }
  const bad = [[0xc0, 0x80], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82], [0x80], [0xff]];
  for (const bytes of bad) {
    assert.throws(() => fromUtf8Js(Uint8Array.from(bytes)), ProtocolError, String(bytes));
    assert.throws(() => fromUtf8(Uint8Array.from(bytes)), ProtocolError, String(bytes));
  }
  assert.equal(isScalarText("a\ud83e\ude90b"), true);
  assert.equal(isScalarText("a\ud800b"), false);
  assert.equal(isScalarText("\udc00"), false);
  assert.equal(isScalarText("\ud800"), false);
  assert.throws(() => utf8("\ud800"), ProtocolError);
});

test("bounded JSON and JCS", () => {
  assert.throws(() => parseBounded("[[[1]]]", 100, 2), ProtocolError);
  assert.deepEqual(parseBounded('["[[[", {"a": "]]"}]', 100, 2), ["[[[", { a: "]]" }]);
  assert.throws(() => parseBounded("{}".padEnd(101), 100, 2), ProtocolError);
  assert.throws(() => parseBounded("{'a':1}", 100, 2), ProtocolError);
  assert.equal(canonicalJson({ b: [1, "é\n"], a: { d: 2, c: 3 }, "\u00e9": 0, Z: 1 }), '{"Z":1,"a":{"c":3,"d":2},"b":[1,"é\\n"],"é":0}');
  assert.throws(() => canonicalJson({ a: 1.5 }), ProtocolError);
  assert.throws(() => canonicalJson({ a: true }), ProtocolError);
});

test("SSE: LF, CRLF and CR line ends, comments, multi-line data, any split", () => {
  const text = "event: init\r\ndata: a\r\ndata: b\r\n\r\n: keepalive\n\nevent: chunk\rdata:c\r\rid: 1\nretry: 5\ndata: d\n\n";
  const expected = [
    { event: "init", data: "a\nb" },
    { event: "chunk", data: "c" },
    { event: "message", data: "d" },
  ];
  const bytes = utf8(text);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const p = new SseParser();
    assert.deepEqual([...p.feed(bytes.subarray(0, cut)), ...p.feed(bytes.subarray(cut))], expected, `cut at ${cut}`);
  }
  const p = new SseParser();
  assert.deepEqual(Array.from(bytes).flatMap((b) => p.feed(Uint8Array.of(b))), expected);
});

test("SSE: limits on a line and an event, and invalid UTF-8, are protocol errors", () => {
  assert.throws(() => new SseParser(16, 64).feed(utf8("data: 0123456789abcdef")), ProtocolError);
  const small = new SseParser(16, 20);
  assert.throws(() => small.feed(utf8("data: 0123456789\ndata: 0123456789\n")), ProtocolError);
  assert.throws(() => new SseParser().feed(Uint8Array.of(0x64, 0x61, 0x74, 0x61, 0x3a, 0xff, 0x0a)), ProtocolError);
});
