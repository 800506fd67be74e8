/** The review's findings, each a hostile or awkward case: sealed errors, idle streams, leftovers, limits, platforms. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { b64encode, utf8 } from "../encoding.js";
import { AbortedError, ProtocolError, ServerError, TruncatedError } from "../errors.js";
import { MemoryKeyStore, PrivllmClient } from "../client.js";
import type { ClientOptions, KeyStore } from "../client.js";
import { ResponseReader } from "../stream.js";
import { xhrTransport } from "../transport.js";
import type { XhrLike } from "../transport.js";
import { ANSWER, DEVICE, ENC, NOW_MS, PIN, SECRET, V, answer, fakeFetch, fakeXhr, openRequest, refusal, router, sealedStream, vectorRandom } from "./helpers.js";
import type { Handler, Reply } from "./helpers.js";

const KEYSET = JSON.stringify(V.keyset.document);
const ASK = [{ role: "user" as const, content: "Which planet is largest?" }];
const INIT = ANSWER.sse_text.slice(0, ANSWER.sse_text.indexOf("event: chunk")) as string;

function base(extra: Partial<ClientOptions> = {}): ClientOptions {
  const storage = new MemoryKeyStore();
  void storage.set(DEVICE);
  return { url: "https://router.test:8443", pin: b64encode(PIN), now: () => NOW_MS, random: vectorRandom().random, storage, ...extra };
}


for (const transport of ["fetch", "xhr"] as const) {
  describe(`review, over ${transport}`, () => {
    function client(handler: Handler, extra: Partial<ClientOptions> = {}): PrivllmClient {
      if (transport === "fetch") return new PrivllmClient(base({ transport, fetch: fakeFetch(handler).fetch, ...extra }));
      return new PrivllmClient(base({ transport, XMLHttpRequest: fakeXhr(handler).Xhr, ...extra }));
    }

    test("a sealed unknown_key after a delta ends the chat: no second request, no joined answers", async () => {
      const sse = sealedStream([
        { plaintext: '{"type":"delta","text":"Jupiter"}', final: false },
        { plaintext: '{"type":"error","code":"unknown_key"}', final: true },
      ]);
      const { handler, seen } = router([KEYSET], [(r) => (openRequest(r.body!), { status: 200, body: sse }), answer]);
      const { error, events } = await refusal(client(handler).chat(ASK));
      assert.deepEqual(events, [{ type: "delta", text: "Jupiter" }]);
      assert.ok(error instanceof ServerError && error.code === "unknown_key" && error.status === null, String(error));
      assert.equal(seen.filter((s) => s.method === "POST").length, 1);
    });

    test("a sealed unknown_key even before any delta is not retried", async () => {
      const sse = sealedStream([{ plaintext: '{"type":"error","code":"unknown_key"}', final: true }]);
      const { handler, seen } = router([KEYSET], [() => ({ status: 200, body: sse }), answer]);
      const { error } = await refusal(client(handler).chat(ASK));
      assert.ok(error instanceof ServerError && error.code === "unknown_key" && error.status === null);
      assert.equal(seen.filter((s) => s.method === "POST").length, 1);
    });

    for (const tail of ["event: chunk\ndata: AAAA", "zzzz", "event: chunk\n"]) {
      test(`bytes after the final chunk at the end of the body (${JSON.stringify(tail)}) are refused`, async () => {
        const { handler } = router([KEYSET], [() => ({ status: 200, body: ANSWER.sse_text + tail })]);
        const { error, events } = await refusal(client(handler).chat(ASK));
        assert.ok(error instanceof ProtocolError && !(error instanceof TruncatedError), String(error));
        assert.ok(events.every((e) => e.type === "delta"));
      });
    }

    test("an abort while the router's pubkey refusal is read is an AbortedError", async () => {
      const controller = new AbortController();
      const hang = (): Reply => {
        setImmediate(() => controller.abort());
        return { status: 503, body: "x".repeat(4000) };
      };
      // the refusal's body comes in small parts, a tick apart: the abort lands while it is being read
      const slow: Handler = (r) => (r.url.endsWith("/api/pubkey") ? hang() : { status: 500 });
      const { error } = await refusal(client(slow).chat(ASK, { signal: controller.signal }));
      assert.ok(error instanceof AbortedError, String(error));
    });

    test("a stream of keepalives with no sealed chunk ends after idleTimeoutMs as a truncation, and the request is stopped", async () => {
      let stopped = false;
      const started = Date.now();
      const c = transport === "fetch" ? keepaliveFetch(() => (stopped = true)) : keepaliveXhr(() => (stopped = true));
      const extra = transport === "fetch" ? { fetch: c as typeof fetch } : { XMLHttpRequest: c as new () => XhrLike };
      const chat = new PrivllmClient(base({ transport, ...extra, idleTimeoutMs: 150 })).chat(ASK);
      const { error } = await refusal(chat);
      assert.ok(error instanceof TruncatedError, String(error));
      assert.ok(Date.now() - started < 5000);
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.ok(stopped, "the transport was not aborted");
    });
  });
}

/** The pubkey, then a chat answer that is an init event and ": k" keepalives every 5 ms, forever (until aborted). */
function keepaliveFetch(onStop: () => void): typeof fetch {
  return (async (url: string, init?: RequestInit) => {
    if (String(url).endsWith("/api/pubkey")) return new Response(KEYSET, { status: 200 });
    const signal = init?.signal ?? undefined;
    let timer: ReturnType<typeof setInterval> | undefined;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(utf8(INIT));
        let n = 0;
        timer = setInterval(() => n++ < 2000 && controller.enqueue(utf8(": k\n")), 5);
        signal?.addEventListener("abort", () => {
          clearInterval(timer);
          onStop();
          controller.error(new DOMException("aborted", "AbortError"));
        });
      },
      cancel() {
        clearInterval(timer);
        onStop();
      },
    });
    return new Response(stream, { status: 200 });
  }) as unknown as typeof fetch;
}

function keepaliveXhr(onStop: () => void): new () => XhrLike {
  return class implements XhrLike {
    readyState = 0;
    status = 0;
    responseText = "";
    onreadystatechange: (() => void) | null = null;
    onprogress: (() => void) | null = null;
    onload: (() => void) | null = null;
    onerror: (() => void) | null = null;
    onabort: (() => void) | null = null;
    private url = "";
    private timer: ReturnType<typeof setInterval> | undefined;
    open(_method: string, url: string): void {
      this.url = url;
    }
    setRequestHeader(): void {}
    getResponseHeader(): string | null {
      return null;
    }
    send(): void {
      setImmediate(() => {
        this.status = 200;
        this.readyState = 2;
        this.onreadystatechange?.();
        if (this.url.endsWith("/api/pubkey")) {
          this.responseText = KEYSET;
          this.readyState = 4;
          this.onprogress?.();
          this.onload?.();
          return;
        }
        this.responseText = INIT;
        this.readyState = 3;
        this.onprogress?.();
        let n = 0;
        this.timer = setInterval(() => {
          if (n++ > 2000) return clearInterval(this.timer);
          this.responseText += ": k\n";
          this.onprogress?.();
        }, 5);
      });
    }
    abort(): void {
      clearInterval(this.timer);
      onStop();
      this.onabort?.();
    }
  };
}

test("XHR: a response larger than the cap is refused and the request aborted", async () => {
  let aborted = 0;
  const { Xhr } = fakeXhr(() => ({ status: 200, body: "a".repeat(5000) }));
  class Counting extends Xhr {
    override abort(): void {
      aborted++;
      super.abort();
    }
  }
  const transport = xhrTransport(Counting, 1000);
  const response = await transport({ method: "GET", url: "https://router.test/", headers: {} });
  await assert.rejects(async () => {
    for await (const part of response.body) void part;
  }, ProtocolError);
  assert.equal(aborted, 1);
});

test("the device key is made once when prepare() and chat() start together", async () => {
  let sets = 0;
  let stored: Uint8Array | null = null;
  const slow: KeyStore = {
    async get() {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return stored;
    },
    async set(key) {
      sets++;
      await new Promise((resolve) => setTimeout(resolve, 20));
      stored = key.slice();
    },
  };
  const devices = new Set<string>();
  const record = (r: { body: string | null }): Reply => (devices.add(openRequest(r.body!).body.device_pubkey as string), answer({ method: "POST", url: "", headers: {}, body: r.body }));
  const { handler } = router([KEYSET], [record, record]);
  let draws = 0;
  const random = (n: number): Uint8Array => crypto.getRandomValues(new Uint8Array(n)).map((b, i) => (i === 0 ? (b + draws++) & 255 : b));
  const c = new PrivllmClient(base({ transport: "fetch", fetch: fakeFetch(handler).fetch, storage: slow, random }));
  const prepared = c.prepare();
  const chatted = (async () => {
    try {
      for await (const e of c.chat(ASK)) void e;
    } catch {
      // the random ephemeral key does not match the vectors' answer: only the device key matters here
    }
  })();
  await Promise.all([prepared, chatted]);
  assert.equal(sets, 1);
  assert.equal(devices.size, 1);
});

test("without options.random and crypto.getRandomValues the constructor refuses, naming the polyfill", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto")!;
  Object.defineProperty(globalThis, "crypto", { value: undefined, configurable: true, writable: true });
  try {
    assert.throws(
      () => new PrivllmClient({ url: "https://router.test", pin: PIN, fetch: fakeFetch(() => ({ status: 500 })).fetch }),
      (e: unknown) => e instanceof TypeError && /react-native-get-random-values/.test(e.message),
    );
  } finally {
    Object.defineProperty(globalThis, "crypto", saved);
  }
});

test("a TextDecoder that refuses {fatal: true} (React Native polyfills) falls back to the strict decoder", async () => {
  const saved = globalThis.TextDecoder;
  class NoFatal {
    constructor(_label?: string, opts?: { fatal?: boolean }) {
      if (opts?.fatal) throw new RangeError("fatal not supported");
    }
    decode(): string {
      return "wrong";
    }
  }
  (globalThis as { TextDecoder: unknown }).TextDecoder = NoFatal;
  try {
    const fresh = (await import(`../encoding.js?nofatal=${Date.now()}`)) as typeof import("../encoding.js");
    assert.equal(fresh.fromUtf8(utf8("Jupiter 🪐")), "Jupiter 🪐");
    assert.throws(() => fresh.fromUtf8(Uint8Array.of(0xc0, 0x80)), ProtocolError);
  } finally {
    globalThis.TextDecoder = saved;
  }
});

test("a chunk of the largest size the protocol allows fits in one SSE line", () => {
  const shell = '{"type":"delta","text":""}';
  const text = "a".repeat((1 << 20) - 16 - 7 - shell.length); // sealed: plaintext + 7 zero bytes + 16-byte tag = 1 MiB
  const sse = sealedStream([
    { plaintext: `{"type":"delta","text":"${text}"}`, final: false },
    { plaintext: '{"type":"done","finish_reason":"stop","usage":{}}', final: true },
  ]);
  const reader = new ResponseReader(ENC, SECRET);
  const chunks = reader.feed(utf8(sse));
  assert.equal(chunks.length, 2);
  assert.equal(chunks[0]!.type === "delta" && chunks[0]!.text.length, text.length);
  reader.end();
});

test("the API calls refuse redirects", async () => {
  const redirects: (string | undefined)[] = [];
  const { handler } = router([KEYSET], [answer]);
  const inner = fakeFetch(handler).fetch;
  const spy = ((url: string, init?: RequestInit) => (redirects.push(init?.redirect), inner(url, init))) as typeof fetch;
  for await (const e of new PrivllmClient(base({ transport: "fetch", fetch: spy })).chat(ASK)) void e;
  assert.deepEqual(redirects, ["error", "error"]);
});
