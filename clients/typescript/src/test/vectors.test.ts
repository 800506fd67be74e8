/** Every positive vector and every negative case of docs/vectors/protocol-v1.json, checked step by step. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { b64decode, b64encode, canonicalJson, fromUtf8, hex, unhex, utf8 } from "../encoding.js";
import type { JsonObject } from "../encoding.js";
import { ProtocolError, ServerError, TruncatedError } from "../errors.js";
import { setupAuthR, setupAuthS, x25519Public } from "../hpke.js";
import { chooseKey, StaleKeySetError, verifyKeySet } from "../keyset.js";
import { leadingZeroBits, solve, workHash } from "../pow.js";
import { chatPlaintext, encapsulate, requestAad, sealRequest } from "../request.js";
import { chunkNonce, deriveStreamKeys, ResponseReader } from "../stream.js";
import { PrivllmClient, MemoryKeyStore } from "../client.js";
import { DEVICE, ENC, EPHEMERAL, PIN, SECRET, V, fakeFetch, oddSplits, router } from "./helpers.js";

const K = V.keyset;
const R = V.request;

test("key set: JCS bytes, signature, freshness edges, key choice", () => {
  const doc = { ...K.document } as JsonObject;
  delete doc.signature;
  assert.equal(canonicalJson(doc), K.signed_text);
  assert.equal(hex(b64decode(K.document.signature, 64)), K.signature_hex);
  for (const now of K.fresh_at as number[]) {
    const set = verifyKeySet(JSON.stringify(K.document), PIN, now);
    assert.deepEqual(
      set.keys.map((k) => [k.keyId, hex(k.publicKey), k.notBefore, k.notAfter, k.status]),
      (K.keys as JsonObject[]).map((k) => [k.key_id, k.public_key_hex, k.not_before, k.not_after, k.status]),
    );
  }
  for (const k of K.keys) assert.equal(hex(x25519Public(unhex(k.private_key_hex))), k.public_key_hex);
  const set = verifyKeySet(JSON.stringify(K.document), PIN, R.timestamp);
  assert.equal(chooseKey(set.keys, R.timestamp)?.keyId, K.chosen_key_id_at_timestamp);
});

test("request: plaintext bytes, AuthEncap, ciphertext, body, response secret", () => {
  assert.equal(hex(x25519Public(DEVICE)), R.device_public_key_hex);
  assert.equal(hex(x25519Public(unhex(R.router_private_key_hex))), R.router_public_key_hex);
  const plain = JSON.parse(R.plaintext_text);
  const text = chatPlaintext(plain.messages, { maxTokens: plain.max_tokens, temperature: plain.temperature, verbosity: plain.verbosity });
  assert.equal(text, R.plaintext_text);
  const sender = setupAuthS(unhex(R.router_public_key_hex), DEVICE, utf8(R.info_text), EPHEMERAL);
  assert.equal(hex(sender.enc), R.enc_hex);
  assert.equal(hex(sender.sharedSecret), R.shared_secret_hex);
  assert.equal(fromUtf8(requestAad(R.key_id, R.timestamp, R.request_id)), R.aad_text);
  const sealed = sealRequest(encapsulate(unhex(R.router_public_key_hex), DEVICE, EPHEMERAL), R.key_id, text, R.timestamp, R.request_id);
  assert.deepEqual(sealed.body, R.body);
  assert.equal(hex(b64decode(sealed.body.ciphertext)), R.ciphertext_hex);
  assert.equal(hex(sealed.responseSecret), R.response_secret_hex);
  // and the router's side opens it
  const ctx = setupAuthR(ENC, unhex(R.router_private_key_hex), unhex(R.device_public_key_hex), utf8(R.info_text));
  assert.equal(fromUtf8(ctx.open(utf8(R.aad_text), unhex(R.ciphertext_hex))), R.plaintext_text);
  assert.equal(hex(ctx.export(utf8(R.export_label_text), 32)), R.response_secret_hex);
});

for (const stream of V.streams) {
  test(`stream ${stream.name}: keys, nonces, sealed chunks, and the reader at any split`, () => {
    const keys = deriveStreamKeys(SECRET, ENC, unhex(stream.response_nonce_hex));
    assert.equal(hex(keys.key), stream.key_hex);
    assert.equal(hex(keys.nonce), stream.nonce_base_hex);
    assert.equal(b64encode(unhex(stream.response_nonce_hex)), stream.init.response_nonce);
    stream.chunks.forEach((c: JsonObject, i: number) => {
      const nonce = chunkNonce(keys.nonce, i);
      assert.equal(hex(nonce), c.nonce_hex);
      assert.equal(c.aad_text, c.final ? "final" : "");
      const padded = unhex(c.padded_plaintext_hex as string);
      assert.equal(padded.length % stream.pad_to, 0);
      assert.ok(hex(padded).startsWith(hex(utf8(c.plaintext_text as string))));
      const sealed = chacha20poly1305(keys.key, nonce, utf8(c.aad_text as string)).encrypt(padded);
      assert.equal(b64encode(sealed), c.sealed_b64);
    });
    const bytes = utf8(stream.sse_text);
    for (const parts of [[bytes], oddSplits(bytes), Array.from(bytes, (b) => Uint8Array.of(b))]) {
      const reader = new ResponseReader(ENC, SECRET);
      const opened = parts.flatMap((p) => reader.feed(p));
      reader.end();
      assert.deepEqual(opened, stream.opened);
    }
  });
}

test("proof of work: the work hash, its zero bits, the first solving counter", async () => {
  const P = V.pow;
  const challenge = unhex(P.challenge_hex);
  assert.equal(challenge.length, 42);
  assert.equal(b64encode(challenge), P.required.challenge);
  const hash = workHash(challenge, P.request_id, unhex(P.nonce_hex));
  assert.equal(hex(hash), P.work_hash_hex);
  assert.equal(leadingZeroBits(hash), P.leading_zero_bits);
  const nonce = await solve(challenge, P.request_id, P.required.difficulty);
  assert.equal(hex(nonce), P.nonce_hex);
  assert.deepEqual({ challenge: b64encode(challenge), nonce: b64encode(nonce) }, P.pow);
});

/** What each check refuses, in the vectors' words. */
function keysetRefusal(document: JsonObject, pin: Uint8Array, now: number): string {
  try {
    verifyKeySet(JSON.stringify(document), pin, now);
    return "accepted";
  } catch (e) {
    assert.ok(e instanceof ProtocolError);
    if (e instanceof StaleKeySetError) return e.message.includes("not valid yet") ? "not_yet_valid" : "stale";
    if (e.message.includes("pinned")) return "wrong_pin";
    if (e.message.includes("bad signature")) return "bad_signature";
    return e.message === "malformed key set" ? "malformed" : `other: ${e.message}`;
  }
}

function requestRefusal(body: JsonObject, routerKey: Uint8Array): string {
  const aad = requestAad(body.key_id as number, body.timestamp as number, body.request_id as string);
  if (b64encode(aad) !== body.aad) return "decrypt_failed";
  try {
    const ctx = setupAuthR(b64decode(body.encapsulated_key, 32), routerKey, b64decode(body.device_pubkey, 32), utf8(R.info_text));
    ctx.open(aad, b64decode(body.ciphertext));
    return "accepted";
  } catch {
    return "decrypt_failed";
  }
}

function streamRefusal(sse: string): { refused: string; opened: number } {
  const reader = new ResponseReader(ENC, SECRET);
  let opened = 0;
  try {
    for (const part of oddSplits(utf8(sse))) opened += reader.feed(part).length;
    reader.end();
    return { refused: "accepted", opened };
  } catch (e) {
    if (e instanceof TruncatedError) return { refused: "truncated", opened };
    assert.ok(e instanceof ProtocolError);
    const refused = e.message.startsWith("tampered") ? "tampered" : e.message.includes("after the final") ? "after_final" : "malformed";
    return { refused, opened };
  }
}

function powRefusal(requestId: string, pow: { challenge: string; nonce: string }, now: number): string {
  const P = V.pow;
  if (now > P.required.expires) return "expired";
  const bits = leadingZeroBits(workHash(b64decode(pow.challenge, 42), requestId, b64decode(pow.nonce, undefined, 64)));
  return bits < P.required.difficulty ? "too_weak" : "accepted";
}

async function powRequiredRefusal(required: JsonObject): Promise<string> {
  const { handler, seen } = router([JSON.stringify(K.document)], [() => ({ status: 429, body: JSON.stringify(required) })]);
  const client = new PrivllmClient({ url: "https://router.test", pin: PIN, fetch: fakeFetch(handler).fetch, now: () => R.timestamp * 1000, storage: new MemoryKeyStore() });
  const started = Date.now();
  try {
    for await (const _ of client.chat([{ role: "user", content: "hi" }]));
    return "accepted";
  } catch (e) {
    assert.ok(e instanceof ServerError && e.code === "pow_required" && e.status === 429);
    assert.equal(seen.filter((s) => s.method === "POST").length, 1); // no resend
    assert.ok(Date.now() - started < 1000); // and no work
    return e.message.includes("above this client's ceiling") ? "too_hard" : "other";
  }
}

test("every negative case is refused as the vectors say", async () => {
  const checks = new Set<string>();
  for (const n of V.negative) {
    checks.add(n.check);
    let refused: string;
    if (n.check === "keyset") refused = keysetRefusal(n.document, unhex(n.pin_hex), n.now);
    else if (n.check === "request") refused = requestRefusal(n.body, unhex(n.router_private_key_hex));
    else if (n.check === "stream") {
      const result = streamRefusal(n.sse_text);
      assert.equal(result.opened, n.opened_before, n.name);
      refused = result.refused;
    } else if (n.check === "pow") refused = powRefusal(n.request_id, n.pow, n.now);
    else if (n.check === "pow_required") refused = await powRequiredRefusal(n.required);
    else throw new Error(`unknown check ${n.check}`);
    assert.equal(refused, n.refused, n.name);
  }
  assert.deepEqual([...checks].sort(), ["keyset", "pow", "pow_required", "request", "stream"]);
  assert.equal(V.negative.length, 21);
});
