/**
 * HTTP for the client, streamed: fetch with a readable body where the platform has one, else
 * XMLHttpRequest reading `responseText` as it grows (older React Native buffers fetch bodies).
 * Both give the same thing: a status, headers, and a body as an async iterable of bytes.
 */
import { utf8 } from "./encoding.js";
import { AbortedError, NetworkError, ProtocolError } from "./errors.js";

export type TransportName = "auto" | "fetch" | "xhr";

export interface HttpResponse {
  status: number;
  header(name: string): string | null;
  /** Iterate once; breaking out of the loop (or an error) cancels the request. */
  body: AsyncIterable<Uint8Array>;
}

export interface HttpRequest {
  method: "GET" | "POST";
  url: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
  /** The answer is bytes, not UTF-8 text (protocol v2): XHR reads it as x-user-defined characters. */
  binary?: boolean;
  signal?: AbortSignal | undefined;
  /** Past every cache. fetch: cache mode "reload" (the browser adds Cache-Control itself, so a CORS request
   * needs no preflight); XHR: a Cache-Control header. */
  reload?: boolean;
}

export type Transport = (request: HttpRequest) => Promise<HttpResponse>;

type Handler = ((ev: never) => unknown) | null;

/** The part of XMLHttpRequest used here, so a test can hand in a fake. */
export interface XhrLike {
  readyState: number;
  status: number;
  responseText: string;
  // (ev: never) => unknown: the DOM's handlers, which take an event, fit; the client's take none.
  onreadystatechange: Handler;
  onprogress: Handler;
  onload: Handler;
  onerror: Handler;
  onabort: Handler;
  ontimeout?: Handler;
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  getResponseHeader(name: string): string | null;
  /** Present in browsers; protocol v2 over XHR needs it to read bytes as they arrive. */
  overrideMimeType?(mime: string): void;
  send(body?: string | Uint8Array<ArrayBuffer> | null): void;
  abort(): void;
}
export type XhrConstructor = new () => XhrLike;

/** Bytes pushed by XHR callbacks, pulled by `for await`; `cancel` runs when the consumer stops early. */
class ByteQueue implements AsyncIterable<Uint8Array> {
  private items: Uint8Array[] = [];
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(private readonly cancel: () => void) {}

  push(bytes: Uint8Array): void {
    if (this.done) return;
    this.items.push(bytes);
    this.notify();
  }

  end(error: Error | null = null): void {
    if (this.done) return;
    this.done = true;
    this.error = error;
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) yield item;
        else if (this.done) {
          if (this.error !== null) throw this.error;
          return;
        } else await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      if (!this.done) {
        this.done = true;
        this.cancel();
      }
    }
  }
}

function aborted(signal: AbortSignal | undefined, error: unknown): Error {
  return signal?.aborted ? new AbortedError() : new NetworkError(`the connection failed: ${error instanceof Error ? error.message : String(error)}`);
}

/** Read on demand (the stream's own backpressure); stopping early cancels the reader. */
async function* readerBody(reader: ReadableStreamDefaultReader<Uint8Array>, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
  let finished = false;
  try {
    for (;;) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (e) {
        finished = true;
        throw aborted(signal, e);
      }
      if (result.done) {
        finished = true;
        return;
      }
      yield result.value;
    }
  } finally {
    if (!finished) void reader.cancel().catch(() => undefined);
  }
}

export function fetchTransport(fetchFn: typeof fetch): Transport {
  return async (request) => {
    let response: Response;
    try {
      response = await fetchFn(request.url, {
        method: request.method,
        headers: request.headers,
        body: sendable(request.body),
        signal: request.signal ?? null,
        redirect: "error", // everything is signed or sealed: a redirect is never expected
        ...(request.reload ? { cache: "reload" as const } : {}),
      });
    } catch (e) {
      throw aborted(request.signal, e);
    }
    const stream = response.body;
    let body: AsyncIterable<Uint8Array>;
    if (stream !== null && stream !== undefined && typeof stream.getReader === "function") {
      body = readerBody(stream.getReader(), request.signal);
    } else {
      // A fetch without a readable body: correct, but the answer arrives all at once.
      body = (async function* () {
        try {
          yield new Uint8Array(await response.arrayBuffer());
        } catch (e) {
          throw aborted(request.signal, e);
        }
      })();
    }
    return { status: response.status, header: (name) => response.headers.get(name), body };
  };
}

/** A body both transports take (the DOM types want bytes backed by an ArrayBuffer: a copy is one). */
function sendable(body: string | Uint8Array | undefined): string | Uint8Array<ArrayBuffer> | null {
  return body === undefined ? null : typeof body === "string" ? body : new Uint8Array(body);
}

/** Bytes from x-user-defined text: each byte one character, 0x80-0xFF as U+F780-U+F7FF. */
function userDefinedBytes(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7f && (c < 0xf780 || c > 0xf7ff)) throw new ProtocolError("not x-user-defined text");
    out[i] = c & 0xff;
  }
  return out;
}

const HEADERS_RECEIVED = 2;
/** XHR keeps the whole response in responseText: a longer one (32 Mi characters) is refused, not buffered. */
export const MAX_XHR_RESPONSE = 32 << 20;

export function xhrTransport(Xhr: XhrConstructor, maxResponse = MAX_XHR_RESPONSE): Transport {
  return (request) =>
    new Promise<HttpResponse>((resolve, reject) => {
      const signal = request.signal;
      if (signal?.aborted) return reject(new AbortedError());
      const xhr = new Xhr();
      let seen = 0;
      let started = false;
      const onAbort = (): void => xhr.abort();
      const queue = new ByteQueue(() => xhr.abort());
      const fail = (error: Error): void => {
        signal?.removeEventListener("abort", onAbort);
        if (started) queue.end(error);
        else reject(error);
      };
      const start = (): void => {
        if (started || xhr.readyState < HEADERS_RECEIVED) return;
        started = true;
        resolve({ status: xhr.status, header: (name) => xhr.getResponseHeader(name), body: queue });
      };
      const drain = (last: boolean): void => {
        start();
        const text = xhr.responseText ?? "";
        if (text.length > maxResponse) {
          queue.end(new ProtocolError("the answer is too large"));
          xhr.abort();
          return;
        }
        // responseText is decoded by the platform, so a character split across packets is whole here;
        // only a surrogate pair could straddle two reads: keep a trailing high surrogate for the next one.
        const held = !request.binary && !last && text.length > seen && (text.charCodeAt(text.length - 1) & 0xfc00) === 0xd800;
        const end = held ? text.length - 1 : text.length;
        if (end > seen) {
          try {
            queue.push(request.binary ? userDefinedBytes(text.slice(seen, end)) : utf8(text.slice(seen, end)));
          } catch (e) {
            queue.end(e as Error); // first: the abort that follows must not replace this error
            xhr.abort();
          }
          seen = end;
        }
      };
      xhr.open(request.method, request.url);
      if (request.binary) {
        if (typeof xhr.overrideMimeType !== "function") return reject(new TypeError("this XMLHttpRequest cannot read bytes as they arrive: use fetch with a streamed body"));
        xhr.overrideMimeType("text/plain; charset=x-user-defined");
      }
      for (const [name, value] of Object.entries(request.headers)) xhr.setRequestHeader(name, value);
      if (request.reload) xhr.setRequestHeader("Cache-Control", "no-cache");
      xhr.onreadystatechange = start;
      xhr.onprogress = () => drain(false);
      xhr.onload = () => {
        drain(true);
        signal?.removeEventListener("abort", onAbort);
        queue.end();
      };
      xhr.onerror = () => fail(new NetworkError("the connection failed"));
      xhr.ontimeout = () => fail(new NetworkError("the connection timed out"));
      xhr.onabort = () => fail(new AbortedError());
      signal?.addEventListener("abort", onAbort);
      xhr.send(sendable(request.body));
    });
}

/** True where fetch streams its body (browsers, Node); false on platforms whose Response has no body stream. */
export function fetchStreams(): boolean {
  return typeof ReadableStream === "function" && typeof Response === "function" && "body" in Response.prototype;
}

export function chooseTransport(name: TransportName, fetchFn: typeof fetch | undefined, Xhr: XhrConstructor | undefined): Transport {
  const useXhr = name === "xhr" || (name === "auto" && Xhr !== undefined && (fetchFn === undefined || !fetchStreams()));
  if (useXhr) {
    if (Xhr === undefined) throw new TypeError("no XMLHttpRequest on this platform");
    return xhrTransport(Xhr);
  }
  if (fetchFn === undefined) throw new TypeError("no fetch on this platform");
  return fetchTransport(fetchFn);
}
