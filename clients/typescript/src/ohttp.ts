/**
 * Oblivious HTTP (RFC 9458) for the client, as privllm/protocol/ohttp/ does it: key configurations
 * (`application/ohttp-keys`, parsed strictly: a client that meets any error drops them all, section 3.2),
 * the Encapsulated Request, and the chunked response (draft-ietf-ohai-chunked-ohttp-08): the response nonce,
 * then varint-framed sealed chunks, a zero length and the final chunk (AAD "final") to the end of the body.
 */
import { expand, extract } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { concat, utf8 } from "./encoding.js";
import { ProtocolError, TruncatedError } from "./errors.js";
import { AEAD_KEY_SIZE, aeadFor, setupBaseS } from "./hpke.js";
import type { Aead, Context as HpkeContext } from "./hpke.js";

export const KEM_X25519 = 0x0020;
export const KDF_HKDF_SHA256 = 0x0001;
const KEY_SIZE = 32; // Npk = Nenc of X25519
const NONCE_SIZE = 12;
const TAG_SIZE = 16;
const MAX_SUITES = 16;
const MAX_CONFIGS = 16;
/** Plaintext bytes of one chunk: what the draft requires every receiver to take. */
export const MAX_CHUNK = 1 << 14;
/** Far below the nonce space; a chat stream never comes close. */
const MAX_CHUNKS = 2 ** 32;
export const REQUEST_LABEL = utf8("message/bhttp request");
export const CHUNKED_RESPONSE_LABEL = utf8("message/bhttp chunked response");
const FINAL_AAD = utf8("final");
const EMPTY = new Uint8Array(0);

export interface SymmetricSuite {
  kdfId: number;
  aeadId: number;
}

export interface KeyConfig {
  keyId: number;
  kemId: number;
  publicKey: Uint8Array;
  suites: SymmetricSuite[];
}

/** The QUIC varint (RFC 9000 section 16), shortest form; values up to 2^53 - 1 (JavaScript's safe integers). */
export function encodeVarint(value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError("out of varint range");
  if (value < 64) return Uint8Array.of(value);
  if (value < 1 << 14) return Uint8Array.of(0x40 | (value >> 8), value & 255);
  if (value < 2 ** 30) return Uint8Array.of(0x80 | (value >>> 24), (value >>> 16) & 255, (value >>> 8) & 255, value & 255);
  const out = u64(value);
  out[0]! |= 0xc0; // a safe integer is below 2^53, so the top two bits are free
  return out;
}

/** 8-byte big-endian of a safe integer, without BigInt (older Hermes lacks it). */
export function u64(value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError("out of u64 range");
  const out = new Uint8Array(8);
  const view = new DataView(out.buffer);
  view.setUint32(0, Math.floor(value / 2 ** 32));
  view.setUint32(4, value >>> 0);
  return out;
}

/** (value, bytes used) of the varint at `offset`, or null while it is not all there. A value past 2^53 - 1 is
 * refused (no length this protocol allows comes near it). */
export function peekVarint(data: Uint8Array, offset: number): [number, number] | null {
  if (offset >= data.length) return null;
  const size = 1 << (data[offset]! >> 6);
  if (offset + size > data.length) return null;
  let value = data[offset]! & 0x3f;
  for (let i = 1; i < size; i++) value = value * 256 + data[offset + i]!;
  if (!Number.isSafeInteger(value)) throw new ProtocolError("varint too large");
  return [value, size];
}

/** Reads a complete message front to back; every shortfall is a ProtocolError. */
export class Reader {
  private offset = 0;
  constructor(private readonly data: Uint8Array) {}

  get remaining(): number {
    return this.data.length - this.offset;
  }

  take(n: number): Uint8Array {
    if (n < 0 || n > this.remaining) throw new ProtocolError("truncated");
    this.offset += n;
    return this.data.subarray(this.offset - n, this.offset);
  }

  uint(size: number): number {
    return this.take(size).reduce((n, b) => n * 256 + b, 0);
  }

  varint(): number {
    const peeked = peekVarint(this.data, this.offset);
    if (peeked === null) throw new ProtocolError("truncated");
    this.offset += peeked[1];
    return peeked[0];
  }

  end(): void {
    if (this.remaining !== 0) throw new ProtocolError("trailing bytes");
  }
}

function checkSuite(kdfId: number, aeadId: number): SymmetricSuite {
  if (kdfId !== KDF_HKDF_SHA256 || AEAD_KEY_SIZE[aeadId] === undefined) {
    throw new ProtocolError("KDF or AEAD outside the allow-list");
  }
  return { kdfId, aeadId };
}

/** One configuration that fills `data` exactly. */
export function parseKeyConfig(data: Uint8Array): KeyConfig {
  const reader = new Reader(data);
  const keyId = reader.uint(1);
  const kemId = reader.uint(2);
  if (kemId !== KEM_X25519) throw new ProtocolError("KEM outside the allow-list");
  const publicKey = reader.take(KEY_SIZE).slice();
  const length = reader.uint(2);
  if (length === 0 || length % 4 !== 0 || length > MAX_SUITES * 4) throw new ProtocolError("key config suites length");
  const list = new Reader(reader.take(length));
  reader.end();
  const suites: SymmetricSuite[] = [];
  while (list.remaining > 0) {
    const suite = checkSuite(list.uint(2), list.uint(2));
    if (suites.some((s) => s.aeadId === suite.aeadId)) throw new ProtocolError("duplicate suite");
    suites.push(suite);
  }
  return { keyId, kemId, publicKey, suites };
}

/** `application/ohttp-keys`: each configuration after its 2-byte length; at least one, ids distinct. */
export function parseKeyConfigs(data: Uint8Array): KeyConfig[] {
  const reader = new Reader(data);
  const configs: KeyConfig[] = [];
  while (reader.remaining > 0) {
    if (configs.length === MAX_CONFIGS) throw new ProtocolError("too many key configs");
    configs.push(parseKeyConfig(reader.take(reader.uint(2))));
  }
  if (configs.length === 0) throw new ProtocolError("no key config");
  if (new Set(configs.map((c) => c.keyId)).size !== configs.length) throw new ProtocolError("duplicate key id");
  return configs;
}

/** The 7-byte request header: key id, KEM, KDF, AEAD. */
export function requestHeader(keyId: number, suite: SymmetricSuite): Uint8Array {
  return Uint8Array.of(keyId, KEM_X25519 >> 8, KEM_X25519 & 255, suite.kdfId >> 8, suite.kdfId & 255, suite.aeadId >> 8, suite.aeadId & 255);
}

/** What the client keeps of a request to open its response. */
export interface ResponseContext {
  suite: SymmetricSuite;
  enc: Uint8Array;
  hpke: HpkeContext;
}

/** An HPKE sender context to a configuration, made before the message: `prefix` = header || enc. */
export interface OhttpSender extends ResponseContext {
  prefix: Uint8Array;
  keyId: number;
  publicKey: Uint8Array;
}

/** SetupBaseS to `config`'s key with `suite`; `ephemeral` is 32 fresh random bytes (fixed only in tests). */
export function senderContext(config: KeyConfig, suite: SymmetricSuite, label: Uint8Array, ephemeral: Uint8Array): OhttpSender {
  if (!config.suites.some((s) => s.kdfId === suite.kdfId && s.aeadId === suite.aeadId)) {
    throw new TypeError("the key configuration does not offer this suite");
  }
  const header = requestHeader(config.keyId, suite);
  const { enc, context } = setupBaseS(config.publicKey, concat(label, Uint8Array.of(0), header), ephemeral, suite.aeadId);
  return { suite, enc, hpke: context, prefix: concat(header, enc), keyId: config.keyId, publicKey: config.publicKey };
}

/** The Encapsulated Request (section 4.3): header || enc || Seal(plaintext). Uses the context's first seal. */
export function encapsulateRequest(sender: OhttpSender, plaintext: Uint8Array): Uint8Array {
  return concat(sender.prefix, sender.hpke.seal(EMPTY, plaintext));
}

/** max(Nn, Nk): the response nonce and the exported secret's length (section 4.4). */
function entropySize(suite: SymmetricSuite): number {
  return Math.max(NONCE_SIZE, AEAD_KEY_SIZE[suite.aeadId]!);
}

/** (aead_key, aead_nonce) of section 4.4 under `label`. */
export function responseKey(context: ResponseContext, label: Uint8Array, responseNonce: Uint8Array): { key: Uint8Array; nonce: Uint8Array } {
  const secret = context.hpke.export(label, entropySize(context.suite));
  const prk = extract(sha256, secret, concat(context.enc, responseNonce));
  return { key: expand(sha256, prk, utf8("key"), AEAD_KEY_SIZE[context.suite.aeadId]!), nonce: expand(sha256, prk, utf8("nonce"), NONCE_SIZE) };
}

/** aead_nonce XOR I2OSP(index, Nn). */
export function chunkNonce(base: Uint8Array, index: number): Uint8Array {
  const nonce = base.slice();
  for (let i = NONCE_SIZE - 1, n = index; n > 0; i--, n = Math.floor(n / 256)) nonce[i]! ^= n & 255;
  return nonce;
}

/** Client: fed any split of a chunked response, opens each chunk in order. `end()` at the end of the body returns
 * the final chunk's plaintext, or throws TruncatedError. Any error closes it for good. */
export class ChunkedResponseOpener {
  private buffer: Uint8Array = EMPTY;
  private cipher: { aead: Aead; key: Uint8Array; nonce: Uint8Array } | null = null;
  private count = 0;
  private final = false;
  private closed = false;
  private readonly maxSealed: number;

  constructor(
    private readonly context: ResponseContext,
    maxChunk = MAX_CHUNK,
  ) {
    this.maxSealed = maxChunk + TAG_SIZE;
  }

  /** True once the zero length has arrived: the rest of the body is the final chunk. */
  get inFinal(): boolean {
    return this.final;
  }

  feed(data: Uint8Array): Uint8Array[] {
    if (this.closed) throw new ProtocolError("bytes after the response ended or failed");
    try {
      this.buffer = this.buffer.length === 0 ? data.slice() : concat(this.buffer, data);
      return this.advance();
    } catch (e) {
      this.closed = true;
      throw e;
    }
  }

  end(): Uint8Array {
    if (this.closed) throw new ProtocolError("the response already ended or failed");
    this.closed = true;
    if (!this.final || this.cipher === null) throw new TruncatedError("the stream ended before its final chunk");
    return this.open(this.buffer, true);
  }

  private advance(): Uint8Array[] {
    if (this.cipher === null) {
      const size = entropySize(this.context.suite);
      if (this.buffer.length < size) return [];
      const { key, nonce } = responseKey(this.context, CHUNKED_RESPONSE_LABEL, this.buffer.subarray(0, size));
      this.cipher = { aead: aeadFor(this.context.suite.aeadId), key, nonce };
      this.buffer = this.buffer.subarray(size);
    }
    const opened: Uint8Array[] = [];
    while (!this.final && this.buffer.length > 0) {
      const peeked = peekVarint(this.buffer, 0);
      if (peeked === null) break;
      const [length, size] = peeked;
      if (length === 0) {
        this.final = true;
        this.buffer = this.buffer.subarray(size);
      } else if (length > this.maxSealed) {
        throw new ProtocolError("chunk too large");
      } else if (this.buffer.length < size + length) {
        break;
      } else {
        opened.push(this.open(this.buffer.subarray(size, size + length), false));
        this.buffer = this.buffer.subarray(size + length);
      }
    }
    if (this.final && this.buffer.length > this.maxSealed) throw new ProtocolError("final chunk too large");
    return opened;
  }

  private open(sealed: Uint8Array, final: boolean): Uint8Array {
    if (this.count >= MAX_CHUNKS) throw new ProtocolError("too many chunks");
    const { aead, key, nonce } = this.cipher!;
    let plaintext: Uint8Array;
    try {
      plaintext = aead(key, chunkNonce(nonce, this.count), final ? FINAL_AAD : EMPTY).decrypt(sealed);
    } catch {
      throw new ProtocolError("tampered chunk");
    }
    this.count++;
    if (plaintext.length === 0 && !final) throw new ProtocolError("tampered chunk: an empty non-final chunk");
    return plaintext;
  }
}
