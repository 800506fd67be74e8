/**
 * Protocol v2 against docs/vectors/protocol-v2.json (made by the Python sans-IO code, privllm/test/vectors_v2.py):
 * signed key configurations, both requests byte for byte with the device proof, the answer and the stale refusal
 * at every split, proof of work bound to enc, and every client-side negative case; then hostile answers made here.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { concat, hex, unhex, utf8 } from "../encoding.js";
import { ProtocolError, TruncatedError } from "../errors.js";
import { StaleKeySetError } from "../keyset.js";
import { encodeRequest } from "../bhttp.js";
import { parseKeyConfigs, REQUEST_LABEL, senderContext } from "../ohttp.js";
import type { KeyConfig, OhttpSender } from "../ohttp.js";
import { leadingZeroBits, solve, workHash } from "../pow.js";
import { chatPlaintext } from "../request.js";
import type { Chunk } from "../stream.js";
import { deviceProof, parseHttpDate, prepareV2, ResponseReaderV2, sealChatRequest, verifyKeyConfigs } from "../v2.js";
import type { KeyConfigHeaders } from "../v2.js";
import { AnswerSealer, CONFIG, openRequest } from "./v2helpers.js";

// Typed loosely on purpose: checked member by member below.
const V: any = JSON.parse(readFileSync(new URL("../../../../docs/vectors/protocol-v2.json", import.meta.url), "utf8"));
const K = V.key_configs;

function headersOf(h: Record<string, string>): KeyConfigHeaders {
  return { signingKey: h["Privllm-Keys-Signing-Key"] ?? null, issued: h["Privllm-Keys-Issued"] ?? null, expires: h["Privllm-Keys-Expires"] ?? null, signature: h["Privllm-Keys-Signature"] ?? null };
}

function configOf(keyId: number): KeyConfig {
  return parseKeyConfigs(unhex(K.body_hex)).find((c) => c.keyId === keyId)!;
}

/** The client's sender context for a vector request (its ephemeral key and suite). */
function senderOf(r: any): OhttpSender {
  return senderContext(configOf(r.key_id), { kdfId: r.suite[0], aeadId: r.suite[1] }, REQUEST_LABEL, unhex(r.ephemeral_private_key_hex));
}

/** Feed `body` cut at `cut`, then end: the events, or the error thrown and how many events came before it. */
function read(reader: ResponseReaderV2, body: Uint8Array, cut = body.length): { events: Chunk[]; error: unknown } {
  const events: Chunk[] = [];
  try {
    events.push(...reader.feed(body.subarray(0, cut)));
    events.push(...reader.feed(body.subarray(cut)));
    events.push(...reader.end());
    return { events, error: null };
  } catch (error) {
    return { events, error };
  }
}

test("v2 vectors: key configurations, signature headers, freshness edges", () => {
  const pin = unhex(K.pin_hex);
  const body = unhex(K.body_hex);
  for (const now of K.fresh_at as number[]) {
    const set = verifyKeyConfigs(body, headersOf(K.headers), pin, now);
    assert.deepEqual([set.issuedAt, set.expires], [K.issued, K.expires]);
    assert.deepEqual(
      set.configs.map((c) => [c.keyId, c.kemId, hex(c.publicKey), c.suites.map((s) => [s.kdfId, s.aeadId])]),
      K.keys.map((k: any) => [k.key_id, k.kem_id, k.public_key_hex, k.suites]),
    );
  }
  assert.equal(K.headers["Content-Type"], "application/ohttp-keys");
});

const KEY_REFUSALS: Record<string, (e: unknown) => boolean> = {
  wrong_pin: (e) => e instanceof ProtocolError && !(e instanceof StaleKeySetError) && /pinned/.test(e.message),
  bad_signature: (e) => e instanceof ProtocolError && !(e instanceof StaleKeySetError) && /signature/.test(e.message),
  malformed: (e) => e instanceof ProtocolError && !(e instanceof StaleKeySetError),
  stale: (e) => e instanceof StaleKeySetError && /expired/.test(e.message),
  not_yet_valid: (e) => e instanceof StaleKeySetError && /not valid yet/.test(e.message),
};

for (const n of V.negative.filter((n: any) => n.check === "key_configs")) {
  test(`v2 negative ${n.name}: refused (${n.refused})`, () => {
    const check = KEY_REFUSALS[n.refused as string];
    assert.ok(check !== undefined, n.refused);
    assert.throws(() => verifyKeyConfigs(unhex(n.body_hex), headersOf(n.headers), unhex(n.pin_hex), n.now), check);
  });
}

for (const r of V.requests) {
  test(`v2 request, suite ${r.suite}: device proof, BHTTP bytes, encapsulated request byte for byte, response secret`, () => {
    const device = unhex(r.device_private_key_hex);
    const devicePublic = unhex(r.device_public_key_hex);
    const sender = senderOf(r);
    assert.equal(hex(sender.enc), r.enc_hex);
    assert.equal(hex(sender.prefix), r.header_hex + r.enc_hex);
    assert.equal(hex(deviceProof(device, unhex(r.router_public_key_hex), sender.enc, r.timestamp)), r.proof_hex);
    const chat = chatPlaintext(r.chat.messages, { maxTokens: r.chat.max_tokens, temperature: r.chat.temperature, verbosity: r.chat.verbosity });
    const sealed = sealChatRequest(sender, device, devicePublic, chat, r.timestamp);
    assert.equal(hex(sealed.body), r.encapsulated_request_hex);
    const content = encodeRequest("POST", "https", "privllm", "/api/chat", [["content-type", utf8("application/json")]], utf8(r.content_text));
    assert.equal(hex(content), r.bhttp_request_hex);
    assert.equal(hex(sealed.context.hpke.export(utf8(r.response_secret_label_text), r.response_secret_hex.length / 2)), r.response_secret_hex);
    // and the gateway written from the spec opens it
    const opened = openRequest(sealed.body, unhex(r.router_private_key_hex));
    assert.equal(hex(opened.bhttp), r.bhttp_request_hex);
  });
}

/** The vector response answers the request whose response secret its keys come from. */
function responseSender(): OhttpSender {
  return senderOf(V.requests[0]);
}

for (const name of ["response", "stale_refusal"]) {
  test(`v2 ${name}: the reader at every split gives the Python reader's events, status and date`, () => {
    const R = V[name];
    const body = unhex(R.body_hex);
    for (let cut = 0; cut <= body.length; cut++) {
      const reader = new ResponseReaderV2(responseSender());
      const { events, error } = read(reader, body, cut);
      assert.equal(error, null, `cut at ${cut}: ${String(error)}`);
      assert.deepEqual(events, R.reader.events);
      assert.deepEqual([reader.status, reader.date, reader.finished], [R.reader.status, R.reader.date, true]);
    }
  });
}

test("v2 stale refusal: the date field and the clock offset it implies", () => {
  const S = V.stale_refusal;
  assert.equal(parseHttpDate(S.date_text), S.router_now);
  assert.equal(S.router_now - V.requests[0].timestamp, S.clock_offset);
  for (const bad of ["Fri, 01 Jan 2026 01:01:31 GMT", "Thu, 1 Jan 2026 01:01:31 GMT", "Thu, 31 Feb 2026 01:01:31 GMT", "Thursday, 01-Jan-26 01:01:31 GMT", "Thu, 01 Jan 2026 01:01:31 UTC"]) {
    assert.throws(() => parseHttpDate(bad), ProtocolError, bad);
  }
});

const RESPONSE_REFUSALS: Record<string, (e: unknown) => boolean> = {
  truncated: (e) => e instanceof TruncatedError,
  tampered: (e) => e instanceof ProtocolError && !(e instanceof TruncatedError) && /tampered/.test(e.message),
  malformed: (e) => e instanceof ProtocolError && !(e instanceof TruncatedError),
  after_final: (e) => e instanceof ProtocolError && !(e instanceof TruncatedError) && /after the last/.test(e.message),
};

for (const n of V.negative.filter((n: any) => n.check === "response")) {
  test(`v2 negative ${n.name}: refused (${n.refused}) after ${n.opened.length} events, at every split`, () => {
    const check = RESPONSE_REFUSALS[n.refused as string];
    assert.ok(check !== undefined, n.refused);
    const body = unhex(n.body_hex);
    for (let cut = 0; cut <= body.length; cut++) {
      const reader = new ResponseReaderV2(responseSender());
      const { events, error } = read(reader, body, cut);
      assert.ok(check(error), `cut at ${cut}: ${String(error)}`);
      assert.deepEqual(events, n.opened, `cut at ${cut}`);
      assert.throws(() => reader.feed(new Uint8Array(1)), ProtocolError, "closed after a failure");
    }
  });
}

test("v2 proof of work: the work hash binds enc; the solver finds the vector's nonce", async () => {
  const P = V.pow;
  const challenge = unhex(P.challenge_hex);
  assert.equal(hex(workHash(challenge, unhex(P.enc_hex), unhex(P.nonce_hex))), P.work_hash_hex);
  assert.equal(leadingZeroBits(unhex(P.work_hash_hex)), P.leading_zero_bits);
  assert.equal(hex(await solve(challenge, unhex(P.enc_hex), P.difficulty)), P.nonce_hex);
  const other = V.negative.find((n: any) => n.name === "pow_other_enc");
  assert.ok(leadingZeroBits(workHash(challenge, unhex(other.enc_hex), unhex(P.nonce_hex))) < P.difficulty);
});

// Hostile answers made here, with the router's side written from the spec (v2helpers.ts).

function fresh(): { sender: OhttpSender; sealer: AnswerSealer } {
  const sender = senderContext(CONFIG, CONFIG.suites[0]!, REQUEST_LABEL, new Uint8Array(32).fill(0x55));
  const opened = openRequest(sealChatRequest(sender, new Uint8Array(32).fill(0x22), new Uint8Array(32), chatPlaintext([{ role: "user", content: "hi" }], {}), 1).body);
  return { sender, sealer: new AnswerSealer(opened.context) };
}

const DONE = { type: "done", finish_reason: "stop", usage: {} };

test("v2 answers: keep-alives and padding are invisible; a line split across chunks joins", () => {
  const { sender, sealer } = fresh();
  const line = sealer.line({ type: "delta", text: "split ✓" });
  const body = concat(sealer.start(), sealer.keepalive(), sealer.seal(AnswerSealer.content(line.subarray(0, 5))), sealer.seal(AnswerSealer.content(line.subarray(5))), sealer.final(DONE));
  const reader = new ResponseReaderV2(sender);
  const { events, error } = read(reader, body, 40);
  assert.equal(error, null);
  assert.deepEqual(events, [{ type: "delta", text: "split ✓" }, DONE]);
});

test("v2 answers: keep-alives do not count as progress (the idle timer's measure), the head and events do", () => {
  const { sender, sealer } = fresh();
  const reader = new ResponseReaderV2(sender);
  reader.feed(sealer.start());
  assert.equal(reader.progress, 1);
  reader.feed(concat(sealer.keepalive(), sealer.keepalive()));
  assert.equal(reader.progress, 1);
  reader.feed(sealer.event({ type: "delta", text: "x" }));
  assert.equal(reader.progress, 2);
});

test("v2 request: a router key of small order is refused before anything is sent", () => {
  const order8 = unhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
  assert.throws(() => prepareV2({ ...CONFIG, publicKey: order8 }, new Uint8Array(32).fill(1)), ProtocolError);
  assert.throws(() => deviceProof(new Uint8Array(32).fill(1), order8, new Uint8Array(32), 1), ProtocolError);
});

test("v2 answers, hostile: wrong content type, extra fields, trailers, non-zero padding, 200 with an error-only rule broken", () => {
  const cases: [string, (s: AnswerSealer) => Uint8Array][] = [
    ["content type", (s) => concat(s.seal(concat(Uint8Array.of(3, 0x40, 200, 12), utf8("content-type"), Uint8Array.of(10), utf8("text/plain"), Uint8Array.of(0))), s.final(DONE))],
    ["unknown field", (s) => concat(s.seal(concat(AnswerSealer.head(200).subarray(0, -1), Uint8Array.of(1), utf8("x"), Uint8Array.of(1), utf8("y"), Uint8Array.of(0))), s.final(DONE))],
    ["trailers", (s) => concat(s.start(), s.seal(concat(AnswerSealer.content(s.line(DONE)), Uint8Array.of(0, 1), utf8("x"), Uint8Array.of(1), utf8("y"), Uint8Array.of(0)), true))],
    ["padding", (s) => concat(s.start(), s.seal(concat(AnswerSealer.content(s.line(DONE)), AnswerSealer.END, Uint8Array.of(1)), true))],
    ["delta in a refusal", (s) => s.seal(concat(AnswerSealer.head(401), AnswerSealer.content(s.line({ type: "delta", text: "x" })), AnswerSealer.END), true)],
    ["known-length BHTTP", (s) => concat(s.seal(Uint8Array.of(1, 0x40, 200, 0)), s.final(DONE))],
    ["two events in the final chunk", (s) => concat(s.start(), s.seal(concat(AnswerSealer.content(concat(s.line({ type: "delta", text: "x" }), s.line(DONE))), AnswerSealer.END), true))],
    ["a bad event", (s) => concat(s.start(), s.event({ type: "delta", text: 5 }), s.final(DONE))],
    ["no head", (s) => s.final(DONE)],
  ];
  for (const [name, make] of cases) {
    const { sender, sealer } = fresh();
    const { error } = read(new ResponseReaderV2(sender), make(sealer));
    assert.ok(error instanceof ProtocolError && !(error instanceof TruncatedError), `${name}: ${String(error)}`);
  }
  const { sender, sealer } = fresh();
  const { events, error } = read(new ResponseReaderV2(sender), concat(sealer.start(), sealer.event({ type: "delta", text: "x" })));
  assert.ok(error instanceof TruncatedError);
  assert.deepEqual(events, [{ type: "delta", text: "x" }]);
});
