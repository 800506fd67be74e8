/** Test material for protocol v2: the router's side (open a request, seal an answer) written from the spec, a
 * signed key configuration, and a fake router speaking POST /api/ohttp. */
import { ed25519 } from "@noble/curves/ed25519.js";
import { b64decode, b64encode, concat, fromUtf8, unhex, utf8 } from "../encoding.js";
import { aeadFor, setupBaseR, x25519Public } from "../hpke.js";
import { CHUNKED_RESPONSE_LABEL, chunkNonce, encodeVarint, KEM_X25519, REQUEST_LABEL, Reader, responseKey, u64 } from "../ohttp.js";
import type { KeyConfig, ResponseContext } from "../ohttp.js";
import { KEYS_LABEL } from "../v2.js";

export const ROUTER_SK = unhex("0f".repeat(32));
export const ROUTER_PK = x25519Public(ROUTER_SK);
export const IDENTITY_SEED = unhex("a1".repeat(32));
export const IDENTITY = ed25519.getPublicKey(IDENTITY_SEED);
export const CHACHA = { kdfId: 1, aeadId: 3 };
export const AES128 = { kdfId: 1, aeadId: 1 };

export function encodeKeyConfig(c: KeyConfig): Uint8Array {
  const suites = concat(...c.suites.map((s) => Uint8Array.of(0, s.kdfId, 0, s.aeadId)));
  const body = concat(Uint8Array.of(c.keyId, KEM_X25519 >> 8, KEM_X25519 & 255), c.publicKey, Uint8Array.of(suites.length >> 8, suites.length & 255), suites);
  return concat(Uint8Array.of(body.length >> 8, body.length & 255), body);
}

export const CONFIG: KeyConfig = { keyId: 5, kemId: KEM_X25519, publicKey: ROUTER_PK, suites: [CHACHA, AES128] };
export const CONFIGS_BODY = encodeKeyConfig(CONFIG);

/** The headers GET /api/ohttp-keys sends, signed by `seed` (the pinned identity unless a test says otherwise). */
export function keyHeaders(issued: number, expires: number, body = CONFIGS_BODY, seed = IDENTITY_SEED): Record<string, string> {
  const signature = ed25519.sign(concat(KEYS_LABEL, u64(issued), u64(expires), body), seed);
  return {
    "privllm-keys-signing-key": b64encode(ed25519.getPublicKey(seed)),
    "privllm-keys-issued": String(issued),
    "privllm-keys-expires": String(expires),
    "privllm-keys-signature": b64encode(signature),
  };
}

export interface OpenedRequest {
  context: ResponseContext;
  enc: Uint8Array;
  keyId: number;
  json: { v: number; timestamp: number; device_pubkey: string; proof: string; chat: { messages: { role: string; content: string }[] } };
  bhttp: Uint8Array;
}

/** The gateway's side of an Encapsulated Request to CONFIG: decapsulate, read the known-length BHTTP request. */
export function openRequest(body: Uint8Array, sk = ROUTER_SK): OpenedRequest {
  const header = body.subarray(0, 7);
  const r = new Reader(header);
  const keyId = r.uint(1);
  r.uint(2);
  const suite = { kdfId: r.uint(2), aeadId: r.uint(2) };
  const enc = body.subarray(7, 39).slice();
  const hpke = setupBaseR(enc, sk, concat(REQUEST_LABEL, Uint8Array.of(0), header), suite.aeadId);
  const bhttp = hpke.open(new Uint8Array(0), body.subarray(39));
  const reader = new Reader(bhttp);
  if (reader.varint() !== 0) throw new Error("not a known-length request");
  const control = [0, 1, 2, 3].map(() => fromUtf8(reader.take(reader.varint()).slice()));
  if (control.join(" ") !== "POST https privllm /api/chat") throw new Error(`request line ${control.join(" ")}`);
  const fields = new Reader(reader.take(reader.varint()));
  const names = [fromUtf8(fields.take(fields.varint()).slice()), fromUtf8(fields.take(fields.varint()).slice())];
  fields.end();
  if (names.join(": ") !== "content-type: application/json") throw new Error("fields");
  const content = reader.take(reader.varint());
  reader.end();
  return { context: { suite, enc, hpke }, enc, keyId, json: JSON.parse(fromUtf8(content.slice())), bhttp };
}

/** The router's ResponseStream written from the spec: chunked OHTTP around a streamed BHTTP response of JSON lines. */
export class AnswerSealer {
  private index = 0;
  private prefix: Uint8Array;
  private readonly key: Uint8Array;
  private readonly nonce: Uint8Array;

  constructor(
    private readonly context: ResponseContext,
    responseNonce: Uint8Array = new Uint8Array(32).fill(3),
    private readonly padTo = 16,
  ) {
    const size = Math.max(12, context.suite.aeadId === 1 ? 16 : 32);
    this.prefix = responseNonce.subarray(0, size);
    ({ key: this.key, nonce: this.nonce } = responseKey(context, CHUNKED_RESPONSE_LABEL, this.prefix));
  }

  /** One sealed chunk of `plaintext`, final or not. */
  seal(plaintext: Uint8Array, final = false): Uint8Array {
    const sealed = aeadFor(this.context.suite.aeadId)(this.key, chunkNonce(this.nonce, this.index++), final ? utf8("final") : new Uint8Array(0)).encrypt(plaintext);
    const out = concat(this.prefix, encodeVarint(final ? 0 : sealed.length), sealed);
    this.prefix = new Uint8Array(0);
    return out;
  }

  line(obj: unknown): Uint8Array {
    const line = utf8(JSON.stringify(obj) + "\n");
    const pad = this.padTo > 1 && line.length % this.padTo ? this.padTo - (line.length % this.padTo) : 0;
    return concat(line, new Uint8Array(pad));
  }

  static head(status: number, date?: string): Uint8Array {
    const field = (n: string, v: string): Uint8Array => concat(encodeVarint(n.length), utf8(n), encodeVarint(utf8(v).length), utf8(v));
    const fields = concat(field("content-type", "application/privllm-events"), date !== undefined ? field("date", date) : new Uint8Array(0));
    return concat(encodeVarint(3), encodeVarint(status), fields, encodeVarint(0));
  }

  static content(data: Uint8Array): Uint8Array {
    return concat(encodeVarint(data.length), data);
  }

  static readonly END = Uint8Array.of(0, 0);

  start(status = 200): Uint8Array {
    return this.seal(AnswerSealer.head(status));
  }

  event(obj: unknown): Uint8Array {
    return this.seal(AnswerSealer.content(this.line(obj)));
  }

  keepalive(): Uint8Array {
    return this.seal(AnswerSealer.content(new Uint8Array(this.padTo)));
  }

  final(obj: unknown): Uint8Array {
    return this.seal(concat(AnswerSealer.content(this.line(obj)), AnswerSealer.END), true);
  }

  refusal(status: number, obj: unknown, date?: string): Uint8Array {
    return this.seal(concat(AnswerSealer.head(status, date), AnswerSealer.content(this.line(obj)), AnswerSealer.END), true);
  }
}

/** A whole answer: start, deltas, done. */
export function answer(context: ResponseContext, texts: string[], nonce?: Uint8Array): Uint8Array {
  const s = new AnswerSealer(context, nonce);
  return concat(s.start(), ...texts.map((text) => s.event({ type: "delta", text })), s.final({ type: "done", finish_reason: "stop", usage: { completion_tokens: texts.length } }));
}

export { b64decode };
