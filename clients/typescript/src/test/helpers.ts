/** Test material: the conformance vectors, a fake router built on them, and fake transports. */
import { readFileSync } from "node:fs";
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { ed25519 } from "@noble/curves/ed25519.js";
import { b64decode, b64encode, canonicalJson, concat, fromUtf8, unhex, utf8 } from "../encoding.js";
import type { Json, JsonObject } from "../encoding.js";
import { setupAuthR } from "../hpke.js";
import { requestAad } from "../request.js";
import { chunkNonce, deriveStreamKeys } from "../stream.js";
import type { XhrLike } from "../transport.js";
import type { ChatEvent } from "../client.js";

// The vectors file is JSON checked member by member in the tests: typed loosely on purpose.
export const V: any = JSON.parse(readFileSync(new URL("../../../../docs/vectors/protocol-v1.json", import.meta.url), "utf8"));

export const PIN = unhex(V.keyset.pin_hex as string);
export const DEVICE = unhex(V.request.device_private_key_hex as string);
export const EPHEMERAL = unhex(V.request.ephemeral_private_key_hex as string);
export const ROUTER_KEY = unhex(V.request.router_private_key_hex as string);
export const ENC = unhex(V.request.enc_hex as string);
export const SECRET = unhex(V.request.response_secret_hex as string);
export const NOW_MS = (V.request.timestamp as number) * 1000;
export const ANSWER = V.streams[0];
export const ERROR_STREAM = V.streams[1];

/** A key set like the router's, signed by the vectors' identity key. */
export function signedKeySet(issuedAt: number, expires: number, keys: Json = V.keyset.document.keys as Json): string {
  const doc: JsonObject = { ...(V.keyset.document as JsonObject), keys, issued_at: issuedAt, expires };
  delete doc.signature;
  const signature = ed25519.sign(utf8(canonicalJson(doc)), unhex(V.keyset.identity_seed_hex as string));
  return JSON.stringify({ ...doc, signature: b64encode(signature) });
}

/** The router's side of a request sealed by the client: check the AAD, open, and return the plaintext JSON. */
export function openRequest(bodyText: string): { body: JsonObject; plaintext: JsonObject } {
  const body = JSON.parse(bodyText) as JsonObject;
  const aad = requestAad(body.key_id as number, body.timestamp as number, body.request_id as string);
  if (b64encode(aad) !== body.aad) throw new Error("aad mismatch");
  const ctx = setupAuthR(b64decode(body.encapsulated_key, 32), ROUTER_KEY, b64decode(body.device_pubkey, 32), utf8("privllm/v1 request"));
  const plaintext = JSON.parse(fromUtf8(ctx.open(aad, b64decode(body.ciphertext)))) as JsonObject;
  return { body, plaintext };
}

/** A stream sealed for the vectors' request (the client, given the vectors' keys, derives the same secret). */
export function sealedStream(chunks: { plaintext: string; final: boolean }[], responseNonce = new Uint8Array(32).fill(9)): string {
  const keys = deriveStreamKeys(SECRET, ENC, responseNonce);
  let out = `event: init\ndata: {"response_nonce":"${b64encode(responseNonce)}"}\n\n`;
  chunks.forEach((c, i) => {
    const aad = c.final ? utf8("final") : new Uint8Array(0);
    const sealed = chacha20poly1305(keys.key, chunkNonce(keys.nonce, i), aad).encrypt(concat(utf8(c.plaintext), new Uint8Array(7)));
    out += `event: chunk\ndata: ${b64encode(sealed)}\n\n`;
  });
  return out;
}

/** Split bytes at awkward places: 1, 2, 3, 5, 8, ... bytes, so a split falls inside lines, base64 and UTF-8. */
export function oddSplits(bytes: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let [a, b] = [1, 2];
  for (let i = 0; i < bytes.length; ) {
    parts.push(bytes.subarray(i, i + a));
    i += a;
    [a, b] = [b, (a + b) % 37 || 1];
  }
  return parts;
}

function bigParts(bytes: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += 65536) parts.push(bytes.subarray(i, i + 65536));
  return parts;
}

/** Deterministic randomness: 32-byte draws are the vectors' ephemeral key; others fixed bytes. */
export function vectorRandom(): { random: (n: number) => Uint8Array; calls: number[] } {
  const calls: number[] = [];
  return { calls, random: (n) => (calls.push(n), n === 32 ? EPHEMERAL.slice() : new Uint8Array(n).fill(7)) };
}

export interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** the connection breaks after the body's parts */
  breakAfter?: boolean;
}
export interface Seen {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string | null;
  cache?: string;
}
export type Handler = (request: Seen) => Reply;

/** A router: pubkey answers from `keySets` in turn (the last repeats), chat answers from `chats` in turn. */
export function router(keySets: string[], chats: ((request: Seen) => Reply)[]): { handler: Handler; seen: Seen[] } {
  const seen: Seen[] = [];
  let k = 0;
  let c = 0;
  const handler: Handler = (request) => {
    seen.push(request);
    if (request.url.endsWith("/api/pubkey")) return { status: 200, body: keySets[Math.min(k++, keySets.length - 1)]! };
    const next = chats[c++];
    if (next === undefined) throw new Error("unexpected chat request");
    return next(request);
  };
  return { handler, seen };
}

/** The answer vector, after checking that the request opens. */
export const answer = (request: Seen): Reply => {
  openRequest(request.body!);
  return { status: 200, headers: { "content-type": "text/event-stream" }, body: ANSWER.sse_text as string };
};

function headerRecord(init: RequestInit | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  new Headers(init?.headers).forEach((value, name) => (out[name] = value));
  return out;
}

/** A fetch whose bodies are ReadableStreams yielding odd splits; it errors the stream when the signal fires. */
export function fakeFetch(handler: Handler): { fetch: typeof fetch; cancelled: () => number } {
  let cancelled = 0;
  const fn = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const signal = init?.signal ?? undefined;
    if (signal?.aborted) throw new DOMException("aborted", "AbortError");
    const reply = handler({ method: init?.method ?? "GET", url: String(input), headers: headerRecord(init), body: (init?.body as string | null) ?? null, cache: init?.cache ?? "default" });
    if (reply.status === 0) throw new TypeError("fetch failed");
    const bytes = typeof reply.body === "string" ? utf8(reply.body) : (reply.body ?? new Uint8Array(0));
    const parts = bytes.length > 65536 ? bigParts(bytes) : oddSplits(bytes);
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        signal?.addEventListener("abort", () => controller.error(new DOMException("aborted", "AbortError")));
      },
      async pull(controller) {
        await new Promise((resolve) => setImmediate(resolve));
        const part = parts.shift();
        if (part !== undefined) controller.enqueue(part.slice());
        else if (reply.breakAfter) controller.error(new TypeError("terminated"));
        else controller.close();
      },
      cancel() {
        cancelled++;
      },
    });
    return new Response(stream, { status: reply.status, headers: reply.headers ?? {} });
  };
  return { fetch: fn as typeof fetch, cancelled: () => cancelled };
}

/** An XMLHttpRequest that fires onprogress with a growing responseText, as React Native's does. */
export function fakeXhr(handler: Handler): { Xhr: new () => XhrLike; aborted: () => number } {
  let aborted = 0;
  class FakeXhr implements XhrLike {
    readyState = 0;
    status = 0;
    responseText = "";
    onreadystatechange: (() => void) | null = null;
    onprogress: (() => void) | null = null;
    onload: (() => void) | null = null;
    onerror: (() => void) | null = null;
    onabort: (() => void) | null = null;
    private method = "";
    private url = "";
    private headers: Record<string, string> = {};
    private replyHeaders: Record<string, string> = {};
    private stopped = false;
    private userDefined = false;
    overrideMimeType(mime: string): void {
      this.userDefined = mime === "text/plain; charset=x-user-defined";
    }
    open(method: string, url: string): void {
      this.method = method;
      this.url = url;
      this.readyState = 1;
    }
    setRequestHeader(name: string, value: string): void {
      this.headers[name.toLowerCase()] = value;
    }
    getResponseHeader(name: string): string | null {
      return this.replyHeaders[name.toLowerCase()] ?? null;
    }
    send(body?: string | Uint8Array | null): void {
      const reply = handler({ method: this.method, url: this.url, headers: this.headers, body: (body as string | null) ?? null });
      const bytes = typeof reply.body === "string" ? utf8(reply.body) : (reply.body ?? new Uint8Array(0));
      // x-user-defined: each byte one character, 0x80-0xFF as U+F780-U+F7FF (what browsers do)
      const text = this.userDefined ? Array.from(bytes, (b) => String.fromCharCode(b < 0x80 ? b : 0xf700 + b)).join("") : fromUtf8(bytes);
      const parts: string[] = [];
      const big = text.length > 65536 ? 65536 : 0;
      for (let i = 0, n = 1; i < text.length; i += n, n = big || (n * 3) % 41 || 1) parts.push(text.slice(i, i + n));
      const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
      void (async () => {
        await tick();
        if (this.stopped) return;
        if (reply.status === 0) return this.onerror?.();
        this.status = reply.status;
        for (const [k, v] of Object.entries(reply.headers ?? {})) this.replyHeaders[k.toLowerCase()] = v;
        this.readyState = 2;
        this.onreadystatechange?.();
        for (const part of parts) {
          await tick();
          if (this.stopped) return;
          this.responseText += part;
          this.readyState = 3;
          this.onprogress?.();
        }
        await tick();
        if (this.stopped) return;
        if (reply.breakAfter) return this.onerror?.();
        this.readyState = 4;
        this.onload?.();
      })();
    }
    abort(): void {
      if (this.stopped) return;
      aborted++;
      this.stopped = true;
      this.onabort?.();
    }
  }
  return { Xhr: FakeXhr, aborted: () => aborted };
}

/** The events a chat yielded before it failed, and its error (a chat that does not fail is an error). */
export async function refusal(events: AsyncIterable<ChatEvent>): Promise<{ error: unknown; events: ChatEvent[] }> {
  const out: ChatEvent[] = [];
  try {
    for await (const e of events) out.push(e);
  } catch (error) {
    return { error, events: out };
  }
  throw new Error("the chat did not fail");
}
