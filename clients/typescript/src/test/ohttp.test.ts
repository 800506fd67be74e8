/**
 * Oblivious HTTP: RFC 9458 Appendix A and draft-ietf-ohai-chunked-ohttp-08 Appendix A byte for byte (hex copied
 * from privllm/test/test_ohttp.py, which names the sources), then hostile chunked responses and key configurations.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { gcm } from "@noble/ciphers/aes.js";
import { concat, hex, unhex, utf8 } from "../encoding.js";
import { ProtocolError, TruncatedError } from "../errors.js";
import { setupBaseR } from "../hpke.js";
import {
  ChunkedResponseOpener,
  CHUNKED_RESPONSE_LABEL,
  encapsulateRequest,
  encodeVarint,
  parseKeyConfig,
  parseKeyConfigs,
  peekVarint,
  REQUEST_LABEL,
  responseKey,
  senderContext,
} from "../ohttp.js";
import { encodeRequest } from "../bhttp.js";
import { AES128, AnswerSealer, CHACHA, CONFIG, encodeKeyConfig, openRequest } from "./v2helpers.js";

const h = unhex;
const AES = { kdfId: 1, aeadId: 1 };

// RFC 9458 Appendix A
const A_SKR = h("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a");
const A_CONFIG = h("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003");
const A_REQUEST = h("00034745540568747470730b6578616d706c652e636f6d012f");
const A_SKE = h("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73");
const A_PKE = h("4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472");
const A_INFO = h("6d6573736167652f626874747020726571756573740001002000010001");
const A_ENC_REQUEST = h(
  "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1" +
    "9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796" +
    "5e7d86b83dd440b2c0185204b4d63525",
);
const A_RESPONSE = h("0140c8");
const A_SECRET = h("62d87a6ba569ee81014c2641f52bea36");
const A_RESPONSE_NONCE = h("c789e7151fcba46158ca84b04464910d");
const A_AEAD_KEY = h("5d0172a080e428b16d298c4ea0db620d");
const A_AEAD_NONCE = h("f6bf1aeb88d6df87007fa263");
const A_ENC_RESPONSE = h("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd");

// draft-ietf-ohai-chunked-ohttp-08 Appendix A
const C_CONFIG = h("010020668eb21aace159803974a4c67f08b4152d29bed10735fd08f98ccdd6fe09570800080001000100010003");
const C_SKE = h("b26d565f3f875ed480d1abced3d665159650c99174fd0b124ac4bda0c64ae324");
const C_PKE = h("8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032");
const C_INFO = h("6d6573736167652f6268747470206368756e6b656420726571756573740001002000010001");
const C_HEADER = concat(h("01002000010001"), C_PKE);
const C_REQUEST_CHUNKS = [
  h("1c2ad24942d4d692563012f2980c8fef437a336b9b2fc938ef77a5834f"),
  h("1d2e33d8fd25577afe31bd1c79d094f76b6250ae6549b473ecd950501311"),
  h("001c6c1395d0ef7c1022297966307b8a7f"),
];
const C_SECRET = h("1d4484834ae36102a6ac42a5523454d9");
const C_RESPONSE_NONCE = h("bcce7f4cb921309ba5d62edf1769ef09");
const C_AEAD_KEY = h("8209f78f2a1610d80c7125009b00aff0");
const C_AEAD_NONCE = h("fead854635d2d5527d64f546");
const C_RESPONSE_CHUNKS = [h("1179bf1cc87fa0e2c02de4546945aa3d1e48"), h("12b348b5bd4c594c16b6170b07b475845d1f32"), h("00ed9d8a796617a5b27265f4d73247f639")];

test("RFC 9458 Appendix A: key config, request byte for byte, the gateway opens it, the response keys and bytes", () => {
  const config = parseKeyConfig(A_CONFIG);
  assert.deepEqual([config.keyId, config.kemId, config.suites], [1, 0x20, [AES, { kdfId: 1, aeadId: 3 }]]);
  assert.deepEqual(encodeKeyConfig(config).subarray(2), A_CONFIG);
  assert.deepEqual(encodeRequest("GET", "https", "example.com", "/", [], new Uint8Array(0)), A_REQUEST);
  const sender = senderContext(config, AES, REQUEST_LABEL, A_SKE);
  assert.equal(hex(sender.enc), hex(A_PKE));
  assert.equal(hex(encapsulateRequest(sender, A_REQUEST)), hex(A_ENC_REQUEST));
  assert.equal(hex(concat(REQUEST_LABEL, Uint8Array.of(0), A_ENC_REQUEST.subarray(0, 7))), hex(A_INFO));
  const gateway = setupBaseR(A_PKE, A_SKR, A_INFO, 1);
  assert.deepEqual(gateway.open(new Uint8Array(0), A_ENC_REQUEST.subarray(39)), A_REQUEST);
  const label = utf8("message/bhttp response");
  assert.equal(hex(sender.hpke.export(label, 16)), hex(A_SECRET));
  const { key, nonce } = responseKey(sender, label, A_RESPONSE_NONCE);
  assert.deepEqual([hex(key), hex(nonce)], [hex(A_AEAD_KEY), hex(A_AEAD_NONCE)]);
  assert.deepEqual(gcm(key, nonce).decrypt(A_ENC_RESPONSE.subarray(16)), A_RESPONSE);
});

test("chunked draft Appendix A: request chunks byte for byte, response chunks open at every split", () => {
  const sender = senderContext(parseKeyConfig(C_CONFIG), AES, utf8("message/bhttp chunked request"), C_SKE);
  assert.equal(hex(sender.prefix), hex(C_HEADER));
  assert.equal(hex(concat(utf8("message/bhttp chunked request"), Uint8Array.of(0), C_HEADER.subarray(0, 7))), hex(C_INFO));
  const sealed = [sender.hpke.seal(new Uint8Array(0), A_REQUEST.subarray(0, 12)), sender.hpke.seal(new Uint8Array(0), A_REQUEST.subarray(12)), sender.hpke.seal(utf8("final"), new Uint8Array(0))];
  assert.deepEqual(sealed.map((s, i) => hex(concat(encodeVarint(i === 2 ? 0 : s.length), s))), C_REQUEST_CHUNKS.map(hex));
  assert.equal(hex(sender.hpke.export(CHUNKED_RESPONSE_LABEL, 16)), hex(C_SECRET));
  const { key, nonce } = responseKey(sender, CHUNKED_RESPONSE_LABEL, C_RESPONSE_NONCE);
  assert.deepEqual([hex(key), hex(nonce)], [hex(C_AEAD_KEY), hex(C_AEAD_NONCE)]);
  const wire = concat(C_RESPONSE_NONCE, ...C_RESPONSE_CHUNKS);
  for (let cut = 0; cut <= wire.length; cut++) {
    const opener = new ChunkedResponseOpener(sender);
    const got = [...opener.feed(wire.subarray(0, cut)), ...opener.feed(wire.subarray(cut))];
    assert.deepEqual([...got, opener.end()].map(hex), ["01", "40c8", ""]);
  }
  const byByte = new ChunkedResponseOpener(sender);
  const got = Array.from(wire, (_, i) => byByte.feed(wire.subarray(i, i + 1))).flat();
  assert.deepEqual([...got, byByte.end()].map(hex), ["01", "40c8", ""]);
});

test("varints: boundaries, shortest form, safe-integer ceiling", () => {
  for (const [value, spelled] of [
    [0, "00"],
    [63, "3f"],
    [64, "4040"],
    [16383, "7fff"],
    [16384, "80004000"],
    [2 ** 30 - 1, "bfffffff"],
    [2 ** 30, "c000000040000000"],
    [2 ** 53 - 1, "c01fffffffffffff"],
  ] as const) {
    assert.equal(hex(encodeVarint(value)), spelled);
    assert.deepEqual(peekVarint(unhex(spelled), 0), [value, spelled.length / 2]);
  }
  assert.equal(peekVarint(unhex("4040"), 1), null);
  assert.equal(peekVarint(unhex("80"), 0), null);
  assert.throws(() => peekVarint(unhex("ffffffffffffffff"), 0), ProtocolError);
});

test("key configs: every truncation, trailing byte, id outside the allow-list, bad lengths, duplicates", () => {
  for (let n = 0; n < A_CONFIG.length; n++) assert.throws(() => parseKeyConfig(A_CONFIG.subarray(0, n)), ProtocolError, `cut at ${n}`);
  assert.throws(() => parseKeyConfig(concat(A_CONFIG, Uint8Array.of(0))), ProtocolError);
  const variant = (offset: number, bytes: number[]): Uint8Array => {
    const c = A_CONFIG.slice();
    c.set(bytes, offset);
    return c;
  };
  assert.throws(() => parseKeyConfig(variant(1, [0, 0x21])), ProtocolError, "KEM");
  assert.throws(() => parseKeyConfig(variant(37, [0, 2])), ProtocolError, "KDF");
  assert.throws(() => parseKeyConfig(variant(39, [0, 4])), ProtocolError, "AEAD");
  assert.throws(() => parseKeyConfig(variant(41, [0, 1, 0, 1])), ProtocolError, "duplicate suite");
  assert.throws(() => parseKeyConfig(concat(A_CONFIG.subarray(0, 35), Uint8Array.of(0, 0))), ProtocolError, "no suite");
  assert.throws(() => parseKeyConfig(concat(A_CONFIG.subarray(0, 35), Uint8Array.of(0, 6), A_CONFIG.subarray(37, 43))), ProtocolError, "suite length % 4");
  const one = encodeKeyConfig(CONFIG);
  assert.equal(parseKeyConfigs(one).length, 1);
  assert.throws(() => parseKeyConfigs(new Uint8Array(0)), ProtocolError, "empty");
  assert.throws(() => parseKeyConfigs(concat(one, one)), ProtocolError, "duplicate key id");
  assert.throws(() => parseKeyConfigs(concat(one, Uint8Array.of(0))), ProtocolError, "trailing");
  const many = Array.from({ length: 17 }, (_, i) => encodeKeyConfig({ ...CONFIG, keyId: i }));
  assert.equal(parseKeyConfigs(concat(...many.slice(0, 16))).length, 16);
  assert.throws(() => parseKeyConfigs(concat(...many)), ProtocolError, "more than 16");
});

/** A fresh request to CONFIG, opened on the gateway side, and a chunked answer's parts. */
function pair(suite = CHACHA): { opener: () => ChunkedResponseOpener; sealer: AnswerSealer } {
  const sender = senderContext(CONFIG, suite, REQUEST_LABEL, new Uint8Array(32).fill(0x44));
  const body = encapsulateRequest(sender, encodeRequest("POST", "https", "privllm", "/api/chat", [["content-type", utf8("application/json")]], utf8("{}")));
  const gateway = openRequest(body);
  return { opener: () => new ChunkedResponseOpener(sender), sealer: new AnswerSealer(gateway.context) };
}

test("chunked responses, both suites: any split opens; hostile streams fail closed", () => {
  for (const suite of [CHACHA, AES128]) {
    const { opener, sealer } = pair(suite);
    const chunks = [sealer.seal(utf8("one")), sealer.seal(utf8("two")), sealer.seal(utf8("end"), true)];
    const wire = concat(...chunks);
    for (let cut = 0; cut <= wire.length; cut += 3) {
      const o = opener();
      const got = [...o.feed(wire.subarray(0, cut)), ...o.feed(wire.subarray(cut)), o.end()];
      assert.deepEqual(got.map((b) => new TextDecoder().decode(b)), ["one", "two", "end"]);
    }
    // every truncation: before the zero length, TruncatedError; after it, the cut final chunk fails its tag
    const finalStart = wire.length - (3 + 16);
    for (let n = 0; n < wire.length; n++) {
      const o = opener();
      o.feed(wire.subarray(0, n));
      assert.throws(() => o.end(), n < finalStart ? TruncatedError : ProtocolError, `cut at ${n}`);
      if (n < finalStart) assert.throws(() => o.end(), ProtocolError); // closed
    }
    // every bit flip
    for (let i = 0; i < wire.length; i++) {
      const bad = wire.slice();
      bad[i]! ^= 1;
      const o = opener();
      assert.throws(() => {
        o.feed(bad);
        o.end();
      }, ProtocolError, `flip at ${i}`);
    }
  }
});

test("chunked responses: after the final chunk, reframed, reordered, empty, oversize", () => {
  let { opener, sealer } = pair();
  const done = sealer.seal(utf8("done"), true);
  let o = opener();
  o.feed(done);
  assert.equal(new TextDecoder().decode(o.end()), "done");
  assert.throws(() => o.feed(Uint8Array.of(1, 0x78)), ProtocolError, "a chunk after the final one");
  o = opener();
  o.feed(concat(done, encodeVarint(1), utf8("x")));
  assert.throws(() => o.end(), ProtocolError, "bytes after the final chunk break its tag");

  ({ opener, sealer } = pair());
  const final = sealer.seal(utf8("done"), true);
  const sealedFinal = final.subarray(33);
  assert.throws(() => opener().feed(concat(final.subarray(0, 32), encodeVarint(sealedFinal.length), sealedFinal)), ProtocolError, "final reframed as non-final");

  ({ opener, sealer } = pair());
  const first = sealer.seal(utf8("first"));
  o = opener();
  o.feed(concat(first.subarray(0, 32), Uint8Array.of(0), first.subarray(33)));
  assert.throws(() => o.end(), ProtocolError, "non-final reframed as final");

  ({ opener, sealer } = pair());
  const [a, b] = [sealer.seal(utf8("first")), sealer.seal(utf8("second"))];
  o = opener();
  assert.throws(() => o.feed(concat(a.subarray(0, 32), b)), ProtocolError, "reordered");
  assert.throws(() => o.feed(a.subarray(32)), ProtocolError, "closed after a failure");

  ({ opener, sealer } = pair());
  const empty = sealer.seal(new Uint8Array(0));
  assert.throws(() => opener().feed(empty), ProtocolError, "an empty non-final chunk");

  ({ opener, sealer } = pair());
  const nonce = sealer.seal(utf8("x")).subarray(0, 32);
  assert.throws(() => opener().feed(concat(nonce, encodeVarint((1 << 14) + 17))), ProtocolError, "oversize chunk refused before it arrives");
  o = opener();
  o.feed(concat(nonce, Uint8Array.of(0), new Uint8Array((1 << 14) + 16)));
  assert.throws(() => o.feed(Uint8Array.of(0)), ProtocolError, "oversize final chunk");
});
