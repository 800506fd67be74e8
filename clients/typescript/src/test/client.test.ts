/** PrivllmClient through fake routers, over both transports: the happy path and the hostile ones. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { b64decode, b64encode } from "../encoding.js";
import { AbortedError, NetworkError, ProtocolError, RateLimitedError, ServerError, TruncatedError } from "../errors.js";
import { leadingZeroBits, workHash } from "../pow.js";
import { MAX_SSE_LINE } from "../stream.js";
import { x25519Public } from "../hpke.js";
import { MemoryKeyStore, PrivllmClient } from "../client.js";
import type { ChatEvent, ClientOptions } from "../client.js";
import { ANSWER, DEVICE, ERROR_STREAM, NOW_MS, PIN, V, answer, fakeFetch, fakeXhr, openRequest, refusal, router, sealedStream, signedKeySet, vectorRandom } from "./helpers.js";
import type { Handler, Reply, Seen } from "./helpers.js";

const KEYSET = JSON.stringify(V.keyset.document);
const ASK = [{ role: "user" as const, content: "Which planet is largest?" }];
const ANSWER_TEXT = (ANSWER.opened as { type: string; text?: string }[]).filter((c) => c.type === "delta").map((c) => c.text).join("");

async function collect(events: AsyncIterable<ChatEvent>): Promise<ChatEvent[]> {
  const out: ChatEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

const stream = (body: string, extra: Partial<Reply> = {}) => (): Reply => ({ status: 200, body, ...extra });
const refuse = (status: number, body: object, headers: Record<string, string> = {}) => (): Reply => ({ status, body: JSON.stringify(body), headers });

for (const transport of ["fetch", "xhr"] as const) {
  describe(`over ${transport}`, () => {
    function client(handler: Handler, extra: Partial<ClientOptions> = {}): { client: PrivllmClient; cancelled: () => number } {
      const storage = new MemoryKeyStore();
      void storage.set(DEVICE);
      const { random } = vectorRandom();
      const base: ClientOptions = { url: "https://router.test:8443", pin: b64encode(PIN), now: () => NOW_MS, random, storage, transport };
      if (transport === "fetch") {
        const f = fakeFetch(handler);
        return { client: new PrivllmClient({ ...base, fetch: f.fetch, ...extra }), cancelled: f.cancelled };
      }
      const x = fakeXhr(handler);
      return { client: new PrivllmClient({ ...base, XMLHttpRequest: x.Xhr, ...extra }), cancelled: x.aborted };
    }

    test("a chat streams the deltas, then done with the usage; the request opens at the router", async () => {
      let plaintext: unknown;
      const { handler, seen } = router([KEYSET], [(r) => ((plaintext = openRequest(r.body!).plaintext), answer(r))]);
      const events = await collect(client(handler).client.chat(ASK, { maxTokens: 64, verbosity: "detailed", reasoningEffort: "low", temperature: 0.5 }));
      assert.equal(events.filter((e) => e.type === "delta").map((e) => (e.type === "delta" ? e.text : "")).join(""), ANSWER_TEXT);
      const last = ANSWER.opened[ANSWER.opened.length - 1];
      assert.deepEqual(events[events.length - 1], { type: "done", finishReason: last.finish_reason, usage: last.usage });
      assert.deepEqual(plaintext, { messages: ASK, max_tokens: 64, temperature: 0.5, verbosity: "detailed", reasoning_effort: "low" });
      const post = seen.find((s) => s.method === "POST")!;
      assert.equal(post.url, "https://router.test:8443/api/chat");
      assert.equal(post.headers["content-type"], "application/json");
    });

    test("the device key is made on first use, stored, and then reused", async () => {
      const devices: unknown[] = [];
      const seenDevice = (r: Seen): Reply => (devices.push(openRequest(r.body!).body.device_pubkey), { status: 503, body: '{"error":"unavailable"}' });
      const { handler } = router([KEYSET], [seenDevice, seenDevice]);
      const storage = new MemoryKeyStore();
      const c = client(handler, { storage, random: (n) => crypto.getRandomValues(new Uint8Array(n)) }).client;
      await refusal(c.chat(ASK));
      const stored = await storage.get();
      assert.ok(stored !== null && stored.length === 32);
      assert.equal(devices[0], b64encode(x25519Public(stored)));
      await refusal(c.chat(ASK));
      assert.equal(devices[1], devices[0]);
    });

    test("the key set is cached between chats; prepare() makes the next encapsulation ahead", async () => {
      const { handler, seen } = router([KEYSET], [answer, answer]);
      const { random, calls } = vectorRandom();
      const c = client(handler, { random }).client;
      await collect(c.chat(ASK));
      await c.prepare();
      const before = calls.length;
      assert.equal((await collect(c.chat(ASK))).pop()!.type, "done");
      await new Promise((resolve) => setImmediate(resolve)); // the next chat's prepare runs after the answer
      assert.equal(seen.filter((s) => s.method === "GET").length, 1);
      // one ephemeral key drawn: the next chat's; this chat sealed with the prepared one
      assert.deepEqual(calls.slice(before), [24, 32]);
    });

    test("a sealed error chunk ends the chat with its code, after the deltas before it", async () => {
      const { handler } = router([KEYSET], [stream(ERROR_STREAM.sse_text)]);
      const { error, events } = await refusal(client(handler).client.chat(ASK));
      assert.deepEqual(events, [{ type: "delta", text: "Jupiter" }]);
      assert.ok(error instanceof ServerError && error.code === "upstream_failed" && error.status === null);
    });

    test("a sealed rate_limited chunk gives its retry time", async () => {
      const sse = sealedStream([{ plaintext: '{"type":"error","code":"rate_limited","message":"slow down","retry_after":42}', final: true }]);
      const { handler } = router([KEYSET], [stream(sse)]);
      const { error } = await refusal(client(handler).client.chat(ASK));
      assert.ok(error instanceof RateLimitedError && error.retryAfter === 42 && error.status === null);
    });

    for (const name of ["stream_tampered_chunk", "stream_reordered", "stream_chunk_after_final", "stream_final_delta", "stream_truncated", "stream_empty"]) {
      test(`hostile stream ${name} is refused`, async () => {
        const n = V.negative.find((x: { name: string }) => x.name === name);
        const { handler } = router([KEYSET], [stream(n.sse_text)]);
        const { error, events } = await refusal(client(handler).client.chat(ASK));
        assert.equal(events.length, Math.min(n.opened_before, ANSWER.opened.length - 1)); // deltas out before it; never done
        assert.ok(error instanceof ProtocolError);
        assert.equal(error instanceof TruncatedError, n.refused === "truncated");
      });
    }

    test("a connection that breaks before the final chunk is a truncation", async () => {
      const cut = ANSWER.sse_text.slice(0, ANSWER.sse_text.lastIndexOf("event: chunk"));
      const { handler } = router([KEYSET], [stream(cut, { breakAfter: true })]);
      const { error } = await refusal(client(handler).client.chat(ASK));
      assert.ok(error instanceof TruncatedError);
    });

    test("characters split across reads (UTF-8 bytes, surrogate pairs) are put back together", async () => {
      const { handler } = router([KEYSET], [stream(`: x${"🪐é".repeat(40)}\n\n${ANSWER.sse_text}`)]);
      assert.equal((await collect(client(handler).client.chat(ASK))).pop()!.type, "done");
    });

    test("a done chunk with a bad usage is malformed", async () => {
      const sse = sealedStream([{ plaintext: '{"type":"done","finish_reason":"stop","usage":{"prompt_tokens":-1}}', final: true }]);
      const { handler } = router([KEYSET], [stream(sse)]);
      assert.ok((await refusal(client(handler).client.chat(ASK))).error instanceof ProtocolError);
    });

    test("an unknown event and an endless line are refused", async () => {
      for (const body of ["event: surprise\ndata: x\n\n", `event: init\ndata: ${"A".repeat(MAX_SSE_LINE + 10)}`]) {
        const { handler } = router([KEYSET], [stream(body)]);
        const { error } = await refusal(client(handler).client.chat(ASK));
        assert.ok(error instanceof ProtocolError && !(error instanceof TruncatedError), String(error));
      }
    });

    test("a wrong pin and a bad signature are protocol errors, and no chat is sent", async () => {
      const other = b64encode(new Uint8Array(32).fill(1));
      const tampered = V.negative.find((x: { name: string }) => x.name === "keyset_tampered").document;
      for (const [keySet, pin] of [[KEYSET, other], [JSON.stringify(tampered), b64encode(PIN)]] as const) {
        const { handler, seen } = router([keySet], []);
        const { error } = await refusal(client(handler, { pin }).client.chat(ASK));
        assert.ok(error instanceof ProtocolError, String(error));
        assert.equal(seen.filter((s) => s.method === "POST").length, 0);
      }
    });

    test("a stale key set is fetched once more past caches; a second stale one is refused", async () => {
      const now = NOW_MS / 1000;
      const fresh = signedKeySet(now - 10, now + 3600);
      const stale = signedKeySet(now - 7300, now - 3700);
      const ok = router([stale, fresh], [answer]);
      await collect(client(ok.handler).client.chat(ASK));
      const gets = ok.seen.filter((s) => s.method === "GET");
      assert.equal(gets.length, 2);
      assert.equal(gets[0]!.headers["cache-control"], undefined);
      if (transport === "xhr") assert.equal(gets[1]!.headers["cache-control"], "no-cache");
      else assert.deepEqual([gets[0]!.cache, gets[1]!.cache, gets[1]!.headers["cache-control"]], ["default", "reload", undefined]);
      const bad = router([stale, stale], []);
      const { error } = await refusal(client(bad.handler).client.chat(ASK));
      assert.ok(error instanceof ProtocolError && error.message.includes("expired"));
      assert.equal(bad.seen.length, 2);
    });

    test("a key set that goes stale between chats is fetched again", async () => {
      let now = NOW_MS;
      const { handler, seen } = router([KEYSET, signedKeySet(V.keyset.expires + 3000, V.keyset.expires + 6000)], [answer, answer]);
      const c = client(handler, { now: () => now }).client;
      await collect(c.chat(ASK));
      now = (V.keyset.expires + 3100) * 1000;
      await refusal(c.chat(ASK)).catch(() => undefined); // the vectors' stream may not match at this time; what counts is the fetch
      assert.equal(seen.filter((s) => s.method === "GET").length, 2);
    });

    test("unknown_key refetches the key set and retries once; twice is an error", async () => {
      const once = router([KEYSET], [refuse(422, { error: "unknown_key" }), answer]);
      const events = await collect(client(once.handler).client.chat(ASK));
      assert.equal(events[events.length - 1]!.type, "done");
      assert.equal(once.seen.filter((s) => s.method === "GET").length, 2);
      const twice = router([KEYSET], [refuse(422, { error: "unknown_key" }), refuse(422, { error: "unknown_key" })]);
      const { error } = await refusal(client(twice.handler).client.chat(ASK));
      assert.ok(error instanceof ServerError && error.code === "unknown_key" && error.status === 422);
    });

    test("429 rate_limited gives Retry-After; 503 gives its code; odd text is not repeated", async () => {
      const limited = router([KEYSET], [refuse(429, { error: "rate_limited" }, { "Retry-After": "7" })]);
      const a = await refusal(client(limited.handler).client.chat(ASK));
      assert.ok(a.error instanceof RateLimitedError && a.error.retryAfter === 7 && a.error.status === 429);
      const down = router([KEYSET], [refuse(503, { error: "unavailable" })]);
      const b = await refusal(client(down.handler).client.chat(ASK));
      assert.ok(b.error instanceof ServerError && b.error.code === "unavailable" && b.error.status === 503);
      const odd = router([KEYSET], [refuse(400, { error: "<script>" }, { "Retry-After": "9999999" })]);
      const c = await refusal(client(odd.handler).client.chat(ASK));
      assert.ok(c.error instanceof ServerError && c.error.code === "unknown" && c.error.retryAfter === null);
    });

    test("pow_required is solved and the same request id resent with the proof", async () => {
      const challenge = new Uint8Array(42).fill(3);
      let first: Seen | undefined;
      const { handler } = router(
        [KEYSET],
        [
          (r) => ((first = r), { status: 429, body: JSON.stringify({ error: "pow_required", challenge: b64encode(challenge), difficulty: 8, expires: NOW_MS / 1000 + 60 }) }),
          (r) => {
            const { body } = openRequest(r.body!);
            const pow = body.pow as { challenge: string; nonce: string };
            assert.equal(body.request_id, JSON.parse(first!.body!).request_id);
            assert.equal(pow.challenge, b64encode(challenge));
            assert.ok(leadingZeroBits(workHash(challenge, body.request_id as string, b64decode(pow.nonce))) >= 8);
            return answer(r);
          },
        ],
      );
      const events = await collect(client(handler).client.chat(ASK));
      assert.equal(events[events.length - 1]!.type, "done");
    });

    test("pow_required above the client's ceiling is refused without work; a malformed one is a protocol error", async () => {
      const required = { error: "pow_required", challenge: b64encode(new Uint8Array(42)), difficulty: 12, expires: 0 };
      const high = router([KEYSET], [refuse(429, required)]);
      const { error } = await refusal(client(high.handler, { powCeiling: 10 }).client.chat(ASK));
      assert.ok(error instanceof ServerError && error.code === "pow_required" && error.message.includes("12 bits"));
      assert.equal(high.seen.filter((s) => s.method === "POST").length, 1);
      const bad = router([KEYSET], [refuse(429, { ...required, difficulty: "12" })]);
      assert.ok((await refusal(client(bad.handler).client.chat(ASK))).error instanceof ProtocolError);
    });

    test("a network failure is a NetworkError", async () => {
      const { handler } = router([KEYSET], [() => ({ status: 0 })]);
      assert.ok((await refusal(client(handler).client.chat(ASK))).error instanceof NetworkError);
    });

    test("an AbortSignal stops the stream and cancels the request", async () => {
      const controller = new AbortController();
      const { handler } = router([KEYSET], [answer]);
      const c = client(handler);
      const events: ChatEvent[] = [];
      await assert.rejects(async () => {
        for await (const e of c.client.chat(ASK, { signal: controller.signal })) {
          events.push(e);
          controller.abort();
        }
      }, AbortedError);
      assert.equal(events.length, 1);
      if (transport === "xhr") assert.equal(c.cancelled(), 1); // xhr.abort() called once (fetch: the signal errors the body)
      const early = new AbortController();
      early.abort();
      await assert.rejects(collect(c.client.chat(ASK, { signal: early.signal })), AbortedError);
    });

    test("breaking out of the loop cancels the body", async () => {
      const { handler } = router([KEYSET], [answer]);
      const c = client(handler);
      for await (const _ of c.client.chat(ASK)) break;
      assert.equal(c.cancelled(), 1);
    });
  });
}

test("transport auto picks fetch where its body streams (Node), and XHR when asked", async () => {
  const f = router([KEYSET], [answer]);
  const storage = new MemoryKeyStore();
  await storage.set(DEVICE);
  const { random } = vectorRandom();
  const c = new PrivllmClient({ url: "https://r.test", pin: PIN, fetch: fakeFetch(f.handler).fetch, XMLHttpRequest: fakeXhr(() => { throw new Error("xhr used"); }).Xhr, now: () => NOW_MS, random, storage });
  assert.equal((await collect(c.chat(ASK))).pop()!.type, "done");
});

test("bad input is the caller's mistake: TypeError", async () => {
  assert.throws(() => new PrivllmClient({ url: "http://r.test", pin: PIN }), TypeError);
  assert.throws(() => new PrivllmClient({ url: "https://r.test/path", pin: PIN }), TypeError);
  assert.throws(() => new PrivllmClient({ url: "https://r.test", pin: new Uint8Array(31) }), TypeError);
  assert.throws(() => new PrivllmClient({ url: "https://r.test", pin: PIN, powCeiling: 25 }), TypeError);
  const c = new PrivllmClient({ url: "https://r.test", pin: PIN, fetch: (() => { throw new Error("no"); }) as typeof fetch });
  for (const messages of [[], [{ role: "assistant" as const, content: "x" }], [{ role: "user" as const, content: "\ud800" }]]) {
    await assert.rejects(collect(c.chat(messages)), TypeError);
  }
  await assert.rejects(collect(c.chat(ASK, { temperature: 3 })), TypeError);
});

test("a fetch without a body stream still works: the answer arrives at once", async () => {
  const { handler } = router([KEYSET], [answer]);
  const streaming = fakeFetch(handler).fetch;
  const buffering = (async (input: string | URL | Request, init?: RequestInit) => {
    const response = await streaming(input, init);
    const buffer = await response.arrayBuffer();
    return { status: response.status, headers: response.headers, body: null, arrayBuffer: async () => buffer } as unknown as Response;
  }) as typeof fetch;
  const storage = new MemoryKeyStore();
  await storage.set(DEVICE);
  const c = new PrivllmClient({ url: "https://r.test", pin: PIN, fetch: buffering, transport: "fetch", now: () => NOW_MS, random: vectorRandom().random, storage });
  const events = await collect(c.chat(ASK));
  assert.equal(events.filter((e) => e.type === "delta").map((e) => (e.type === "delta" ? e.text : "")).join(""), ANSWER_TEXT);
  assert.equal(events.pop()!.type, "done");
});
