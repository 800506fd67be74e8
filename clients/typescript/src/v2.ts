/**
 * Protocol v2 (docs/protocol.md, privllm/protocol/v2/): signed key configurations, the device proof, the sealed
 * chat request (an Oblivious HTTP request around a Binary HTTP `POST /api/chat`), and the reader of the answer:
 * a chunked Oblivious HTTP response holding a streamed Binary HTTP response whose content is JSON lines (v1's
 * chunk objects), with 0x00 padding between lines.
 */
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { b64decode, b64encode, concat, equalBytes, fromUtf8, isObject, parseBounded, utf8 } from "./encoding.js";
import { ProtocolError } from "./errors.js";
import { x25519Public } from "./hpke.js";
import { checkFresh, MAX_KEYSET_LIFETIME } from "./keyset.js";
import { ChunkedResponseOpener, encapsulateRequest, MAX_CHUNK, parseKeyConfigs, REQUEST_LABEL, senderContext, u64 } from "./ohttp.js";
import type { KeyConfig, OhttpSender, ResponseContext } from "./ohttp.js";
import { encodeRequest, ResponseDecoder } from "./bhttp.js";
import type { Part } from "./bhttp.js";
import { checkedChunk } from "./stream.js";
import type { Chunk } from "./stream.js";

export const KEYS_LABEL = utf8("privllm/v2 ohttp-keys\x00");
const DEVICE_KEY_INFO = utf8("privllm/v2 device key");
const DEVICE_PROOF_LABEL = utf8("privllm/v2 device proof\x00");
export const EVENTS_TYPE = "application/privllm-events";
const MAX_EVENT = 1 << 20;
const MAX_EVENT_DEPTH = 4;
const HEAD_LIMITS = { maxFields: 2, maxSection: 256, maxChunk: MAX_CHUNK };
const UNIX_SECONDS = /^(?:0|[1-9][0-9]{0,14})$/;

export interface KeyConfigSet {
  configs: KeyConfig[];
  issuedAt: number;
  expires: number;
}

/** The `Privllm-Keys-*` headers of GET /api/ohttp-keys. */
export interface KeyConfigHeaders {
  signingKey: string | null;
  issued: string | null;
  expires: string | null;
  signature: string | null;
}

function unixSeconds(text: string | null): number {
  if (text === null || !UNIX_SECONDS.test(text)) throw new ProtocolError("malformed key configurations");
  return Number(text);
}

/** Verify `application/ohttp-keys` against the pinned identity key at `now` (Unix seconds): the signing key is the
 * pin, Ed25519 over "privllm/v2 ohttp-keys" || 0x00 || u64(issued) || u64(expires) || body, then v1's freshness
 * rule. Throws ProtocolError (StaleKeySetError for a well-signed set outside its window). */
export function verifyKeyConfigs(body: Uint8Array, headers: KeyConfigHeaders, pin: Uint8Array, now: number): KeyConfigSet {
  if (!equalBytes(b64decode(headers.signingKey, 32), pin)) throw new ProtocolError("key configurations signed by a key other than the pinned identity");
  const signature = b64decode(headers.signature, 64);
  const issuedAt = unixSeconds(headers.issued);
  const expires = unixSeconds(headers.expires);
  const signed = concat(KEYS_LABEL, u64(issuedAt), u64(expires), body);
  if (!ed25519.verify(signature, signed, pin, { zip215: false })) throw new ProtocolError("key configurations have a bad signature");
  if (expires <= issuedAt || expires > issuedAt + MAX_KEYSET_LIFETIME) throw new ProtocolError("malformed key configurations");
  const set = { configs: parseKeyConfigs(body), issuedAt, expires };
  checkFresh(set, now);
  return set;
}

/** HMAC-SHA256(K, "privllm/v2 device proof" || 0x00 || enc || u64(T)), K = HKDF-SHA256(X25519(sk_device, pk_R), "",
 * "privllm/v2 device key" || pk_device || pk_R, 32): binds the device key to this encapsulation and time. */
export function deviceProof(devicePrivate: Uint8Array, routerPublic: Uint8Array, enc: Uint8Array, timestamp: number, devicePublic = x25519Public(devicePrivate)): Uint8Array {
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new RangeError("timestamp out of range");
  let shared: Uint8Array;
  try {
    shared = x25519.getSharedSecret(devicePrivate, routerPublic); // refuses a small-order key (all-zero secret)
  } catch {
    throw new ProtocolError("no shared secret with the router's key");
  }
  const key = hkdf(sha256, shared, new Uint8Array(0), concat(DEVICE_KEY_INFO, devicePublic, routerPublic), 32);
  return hmac(sha256, key, concat(DEVICE_PROOF_LABEL, enc, u64(timestamp)));
}

/** Sealed once: `body` is sent as `message/ohttp-req`, `context` opens the answer, `enc` binds the proof of work. */
export interface SealedV2 {
  body: Uint8Array;
  enc: Uint8Array;
  context: ResponseContext;
}

/** A sender context to the configuration's key with the first suite it offers (made before the message). */
export function prepareV2(config: KeyConfig, ephemeral: Uint8Array): OhttpSender {
  try {
    return senderContext(config, config.suites[0]!, REQUEST_LABEL, ephemeral);
  } catch {
    throw new ProtocolError("the router's key cannot be used"); // a small-order key: no shared secret
  }
}

/** Seal `chatText` (v1's plaintext JSON, from chatPlaintext) with a sender context, used up here. */
export function sealChatRequest(sender: OhttpSender, devicePrivate: Uint8Array, devicePublic: Uint8Array, chatText: string, timestamp: number): SealedV2 {
  const proof = deviceProof(devicePrivate, sender.publicKey, sender.enc, timestamp, devicePublic);
  const content = `{"v":2,"timestamp":${timestamp},"device_pubkey":"${b64encode(devicePublic)}","proof":"${b64encode(proof)}","chat":${chatText}}`;
  const request = encodeRequest("POST", "https", "privllm", "/api/chat", [["content-type", utf8("application/json")]], utf8(content));
  return { body: encapsulateRequest(sender, request), enc: sender.enc, context: sender };
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const IMF_FIXDATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) ([A-Z][a-z]{2}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT$/;

/** Unix seconds of an IMF-fixdate (RFC 9110 section 5.6.7); ProtocolError for any other form, a date that does not
 * exist, or the wrong weekday. */
export function parseHttpDate(text: string): number {
  const m = IMF_FIXDATE.exec(text);
  const month = m === null ? -1 : MONTHS.indexOf(m[2]!);
  if (m === null || month < 0) throw new ProtocolError("malformed date");
  const ms = Date.UTC(Number(m[3]), month, Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]));
  if (!Number.isFinite(ms) || new Date(ms).toUTCString() !== text) throw new ProtocolError("malformed date");
  return ms / 1000;
}

const FINAL_TYPES: readonly string[] = ["done", "error"];

/** Feed the body as it arrives; `feed` returns the events opened so far, `end` (at the end of the body) the last
 * one. `status` and `date` (Unix seconds, or null) are set once the head has arrived. Any error closes it. */
export class ResponseReaderV2 {
  private readonly opener: ChunkedResponseOpener;
  private readonly bhttp = new ResponseDecoder(HEAD_LIMITS);
  private line: Uint8Array = new Uint8Array(0);
  private closed = false;
  status: number | null = null;
  date: number | null = null;
  /** The last event was read. */
  finished = false;
  /** The head and events opened: what the idle timer counts; keep-alives (sealed padding) do not, as in v1. */
  progress = 0;

  constructor(context: ResponseContext) {
    this.opener = new ChunkedResponseOpener(context);
  }

  feed(data: Uint8Array): Chunk[] {
    return this.guarded(() => this.opener.feed(data).flatMap((chunk) => this.chunk(chunk, false)));
  }

  /** The body ended: the events of the final chunk, which must be exactly the last one. */
  end(): Chunk[] {
    const events = this.guarded(() => this.chunk(this.opener.end(), true));
    this.closed = true;
    return events;
  }

  private guarded(step: () => Chunk[]): Chunk[] {
    if (this.closed) throw new ProtocolError("bytes after the answer ended or failed");
    try {
      return step();
    } catch (e) {
      this.closed = true;
      throw e;
    }
  }

  private chunk(plaintext: Uint8Array, final: boolean): Chunk[] {
    const parts: Part[] = [...this.bhttp.feed(plaintext), ...(final ? this.bhttp.end() : [])];
    const events: Chunk[] = [];
    for (const part of parts) {
      if (part.kind === "head") {
        this.head(part.status, part.headers);
        this.progress++;
      }
      else if (part.kind === "end") {
        if (part.trailers.length > 0) throw new ProtocolError("malformed answer: trailers");
      } else events.push(...this.content(part.data));
    }
    if (final && (this.line.length > 0 || events.length !== 1 || !this.finished)) {
      throw new ProtocolError("malformed answer: the final chunk holds exactly the last event");
    }
    if (!final && this.finished) throw new ProtocolError("malformed answer: the last event before the final chunk");
    this.progress += events.length;
    return events;
  }

  private head(status: number, headers: [string, Uint8Array][]): void {
    const names = headers.map(([n]) => n);
    if (new Set(names).size !== names.length || !names.every((n) => n === "content-type" || n === "date")) {
      throw new ProtocolError("malformed answer: fields");
    }
    const fields = new Map(headers);
    const type = fields.get("content-type");
    if (type === undefined || fromUtf8(type) !== EVENTS_TYPE) throw new ProtocolError("malformed answer: content type");
    const date = fields.get("date");
    if (date !== undefined) this.date = parseHttpDate(fromUtf8(date));
    this.status = status;
  }

  /** Events completed by `data`: lines, with the padding between them dropped. */
  private content(data: Uint8Array): Chunk[] {
    this.line = this.line.length === 0 ? data.slice() : concat(this.line, data);
    const events: Chunk[] = [];
    for (let newline = this.line.indexOf(0x0a); newline >= 0; newline = this.line.indexOf(0x0a)) {
      events.push(this.event(stripZeros(this.line.subarray(0, newline))));
      this.line = this.line.subarray(newline + 1);
    }
    const rest = stripZeros(this.line);
    if (rest.length === 0) this.line = new Uint8Array(0);
    else if (rest.length > MAX_EVENT) throw new ProtocolError("malformed answer: event too large");
    return events;
  }

  private event(line: Uint8Array): Chunk {
    if (this.finished) throw new ProtocolError("an event came after the last one");
    const event = parseBounded(fromUtf8(line), MAX_EVENT, MAX_EVENT_DEPTH);
    if (!isObject(event) || typeof event.type !== "string") throw new ProtocolError("malformed chunk");
    const checked = checkedChunk(event);
    this.finished = FINAL_TYPES.includes(checked.type);
    if (this.status !== 200 && checked.type !== "error") throw new ProtocolError("malformed answer: a refusal carries one error event");
    return checked;
  }
}

/** The bytes after any leading 0x00 (padding before a line). */
function stripZeros(bytes: Uint8Array): Uint8Array {
  let start = 0;
  while (start < bytes.length && bytes[start] === 0) start++;
  return bytes.subarray(start);
}
