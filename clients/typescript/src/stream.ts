/** The sealed response stream: key schedule, chunk opening with the final AAD, and the reader of the SSE body. */
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { expand, extract } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { b64decode, concat, fromUtf8, hasExactly, isObject, isScalarText, parseBounded, utf8 } from "./encoding.js";
import type { Json, JsonObject } from "./encoding.js";
import { ProtocolError, TruncatedError } from "./errors.js";
import { SseParser } from "./sse.js";

const FINAL_AAD = utf8("final");
const EMPTY = new Uint8Array(0);
const MAX_CHUNK = 1 << 20;
/** The longest SSE line: "data: " and the base64 of the largest sealed chunk. */
export const MAX_SSE_LINE = "data: ".length + 4 * Math.ceil(MAX_CHUNK / 3);
const MAX_CHUNK_DEPTH = 4;
const MAX_INIT = 256;
const KEY_LABEL = utf8("key");
const NONCE_LABEL = utf8("nonce");

export interface StreamKeys {
  key: Uint8Array;
  nonce: Uint8Array;
}

/** prk = HKDF-Extract(enc || response_nonce, secret); key, nonce = HKDF-Expand(prk, "key" | "nonce"). */
export function deriveStreamKeys(secret: Uint8Array, enc: Uint8Array, responseNonce: Uint8Array): StreamKeys {
  const prk = extract(sha256, secret, concat(enc, responseNonce));
  return { key: expand(sha256, prk, KEY_LABEL, 32), nonce: expand(sha256, prk, NONCE_LABEL, 12) };
}

export function chunkNonce(base: Uint8Array, index: number): Uint8Array {
  const nonce = base.slice();
  for (let i = 11, n = index; n > 0; i--, n = Math.floor(n / 256)) nonce[i]! ^= n & 255;
  return nonce;
}

export type DeltaChunk = { type: "delta"; text: string };
export type DoneChunk = { type: "done"; finish_reason: "stop" | "length"; usage: Record<string, number> };
export type ErrorChunk = { type: "error"; code: string; message?: string; retry_after?: Json };
export type Chunk = DeltaChunk | DoneChunk | ErrorChunk;

function scalarString(value: Json | undefined): value is string {
  return typeof value === "string" && isScalarText(value);
}

/** The chunk if its members have the documented types; unknown members are left alone. */
export function checkedChunk(chunk: JsonObject): Chunk {
  const { type } = chunk;
  const good =
    type === "delta"
      ? scalarString(chunk.text)
      : type === "done"
        ? (chunk.finish_reason === "stop" || chunk.finish_reason === "length") &&
          isObject(chunk.usage) &&
          Object.values(chunk.usage).every((n) => typeof n === "number" && Number.isSafeInteger(n) && n >= 0)
        : type === "error"
          ? scalarString(chunk.code) && (!("message" in chunk) || scalarString(chunk.message))
          : false;
  if (!good) throw new ProtocolError("malformed chunk");
  return chunk as unknown as Chunk;
}

/** Opens chunks in order (chunk i with nonce base XOR i); any failure ends the stream for good. */
export class StreamOpener {
  private index = 0;
  finished = false;

  constructor(private readonly keys: StreamKeys) {}

  open(data: string): { chunk: Chunk; final: boolean } {
    if (this.finished) throw new ProtocolError("a chunk came after the final one");
    this.finished = true; // until this chunk proves good
    const sealed = b64decode(data, undefined, MAX_CHUNK);
    const nonce = chunkNonce(this.keys.nonce, this.index);
    let final = false;
    let plaintext: Uint8Array;
    try {
      plaintext = chacha20poly1305(this.keys.key, nonce, EMPTY).decrypt(sealed);
    } catch {
      try {
        plaintext = chacha20poly1305(this.keys.key, nonce, FINAL_AAD).decrypt(sealed);
      } catch {
        throw new ProtocolError("tampered chunk");
      }
      final = true;
    }
    let end = plaintext.length;
    while (end > 0 && plaintext[end - 1] === 0) end--;
    const chunk = parseBounded(fromUtf8(plaintext.subarray(0, end)), MAX_CHUNK, MAX_CHUNK_DEPTH);
    if (!isObject(chunk) || typeof chunk.type !== "string") throw new ProtocolError("malformed chunk");
    if (final !== (chunk.type === "done" || chunk.type === "error")) throw new ProtocolError("malformed chunk: final flag and type disagree");
    this.index++;
    this.finished = final;
    return { chunk: checkedChunk(chunk), final };
  }
}

/** Feed the body as it arrives; get the opened chunks in order. `end()` when the body ends. */
export class ResponseReader {
  private readonly sse = new SseParser(MAX_SSE_LINE, MAX_SSE_LINE);
  /** Sealed events (init, chunks) seen: what the idle timer counts, keepalives not. */
  progress = 0;
  private opener: StreamOpener | null = null;

  constructor(
    private readonly enc: Uint8Array,
    private readonly responseSecret: Uint8Array,
  ) {}

  get finished(): boolean {
    return this.opener?.finished ?? false;
  }

  feed(bytes: Uint8Array): Chunk[] {
    const chunks: Chunk[] = [];
    for (const event of this.sse.feed(bytes)) {
      this.progress++;
      if (event.event === "init") this.init(event.data);
      else if (event.event === "chunk" && this.opener !== null) chunks.push(this.opener.open(event.data).chunk);
      else throw new ProtocolError("unexpected event in the stream");
    }
    return chunks;
  }

  private init(data: string): void {
    if (this.opener !== null) throw new ProtocolError("a second init event");
    const init = parseBounded(data, MAX_INIT, 1);
    if (!isObject(init) || !hasExactly(init, ["response_nonce"])) throw new ProtocolError("malformed init event");
    const nonce = b64decode(init.response_nonce, 32);
    this.opener = new StreamOpener(deriveStreamKeys(this.responseSecret, this.enc, nonce));
  }

  /** The body ended: without an init and a verified final chunk, the answer was truncated. */
  end(): void {
    if (!this.finished) throw new TruncatedError("the stream ended before its final chunk");
    this.sse.end(); // nothing, not even part of a line or event, may follow the final chunk
  }
}
