/** PrivllmClient with `protocol: 2` through a fake router written from the spec, over both transports: the happy
 * path, the stale refusal and its one clock correction, proof of work bound to enc, unknown_key, and hostile
 * key configurations and answers. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { b64decode, b64encode, concat, hex } from "../encoding.js";
import { AbortedError, ProtocolError, RateLimitedError, ServerError, TruncatedError } from "../errors.js";
import { StaleKeySetError } from "../keyset.js";
import { leadingZeroBits, workHash } from "../pow.js";
import { x25519Public } from "../hpke.js";
import { MemoryKeyStore, PrivllmClient } from "../client.js";
import type { ChatEvent, ClientOptions } from "../client.js";
import { deviceProof } from "../v2.js";
import { fakeFetch, fakeXhr, refusal } from "./helpers.js";
import type { Handler, Reply, Seen } from "./helpers.js";
import { AnswerSealer, answer, CONFIGS_BODY, IDENTITY, keyHeaders, openRequest, ROUTER_PK } from "./v2helpers.js";
import type { OpenedRequest } from "./v2helpers.js";

const NOW = 1_767_229_230;
const DEVICE = new Uint8Array(32).fill(0x22);
const ASK = [{ role: "user" as const, content: "Grüße, which planet? 🪐" }];
const CHUNKED = { "content-type": "message/ohttp-chunked-res" };
const DONE = { type: "done", finish_reason: "stop", usage: { completion_tokens: 2 } };

function keysReply(issued = NOW - 10, expires = NOW + 3600, seed?: Uint8Array): Reply {
  return { status: 200, headers: { "content-type": "application/ohttp-keys", ...keyHeaders(issued, expires, CONFIGS_BODY, seed) }, body: CONFIGS_BODY };
}

type Post = (request: OpenedRequest, seen: Seen) => Reply;

/** A v2 router: key configuration replies in turn (the last repeats), POST /api/ohttp answers in turn. Each POST is
 * opened and its device proof checked. */
function router(keys: Reply[], posts: Post[]): { handler: Handler; seen: Seen[]; opened: OpenedRequest[] } {
  const seen: Seen[] = [];
  const opened: OpenedRequest[] = [];
  let k = 0;
  let p = 0;
  const handler: Handler = (request) => {
    seen.push(request);
    if (request.url.endsWith("/api/ohttp-keys")) return keys[Math.min(k++, keys.length - 1)]!;
    assert.equal(request.url, "https://router.test/api/ohttp");
    assert.equal(request.headers["content-type"], "message/ohttp-req");
    const o = openRequest(request.body as unknown as Uint8Array);
    assert.equal(hex(b64decode(o.json.proof, 32)), hex(deviceProof(DEVICE, ROUTER_PK, o.enc, o.json.timestamp)));
    assert.equal(o.json.device_pubkey, b64encode(x25519Public(DEVICE)));
    opened.push(o);
    const next = posts[p++];
    if (next === undefined) throw new Error("unexpected chat request");
    return next(o, request);
  };
  return { handler, seen, opened };
}

const answers =
  (texts: string[]): Post =>
  (o) => ({ status: 200, headers: CHUNKED, body: answer(o.context, texts) });

function imfDate(seconds: number): string {
  return new Date(seconds * 1000).toUTCString();
}

const stale =
  (date: number): Post =>
  (o) => ({ status: 200, headers: CHUNKED, body: new AnswerSealer(o.context).refusal(401, { type: "error", code: "stale", message: "outside the window" }, imfDate(date)) });

async function collect(events: AsyncIterable<ChatEvent>): Promise<ChatEvent[]> {
  const out: ChatEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

const text = (events: ChatEvent[]): string => events.map((e) => (e.type === "delta" ? e.text : "")).join("");

for (const transport of ["fetch", "xhr"] as const) {
  describe(`protocol 2 over ${transport}`, () => {
    let cancelled = (): number => 0;
    function client(handler: Handler, extra: Partial<ClientOptions> = {}): PrivllmClient {
      const storage = new MemoryKeyStore();
      void storage.set(DEVICE);
      let n = 0;
      const random = (size: number): Uint8Array => new Uint8Array(size).fill(0x30 + (n++ % 64));
      const base: ClientOptions = { url: "https://router.test", pin: IDENTITY, now: () => NOW * 1000, random, storage, transport, protocol: 2 };
      if (transport === "fetch") {
        const f = fakeFetch(handler);
        cancelled = f.cancelled;
        return new PrivllmClient({ ...base, fetch: f.fetch, ...extra });
      }
      const x = fakeXhr(handler);
      cancelled = x.aborted;
      return new PrivllmClient({ ...base, XMLHttpRequest: x.Xhr, ...extra });
    }

    test("stopping after the first delta cancels the request; an abort is an AbortedError", async () => {
      const { handler } = router([keysReply()], [answers(["one", "two", "three"]), answers(["one", "two"])]);
      const c = client(handler);
      for await (const event of c.chat(ASK)) {
        assert.deepEqual(event, { type: "delta", text: "one" });
        break;
      }
      assert.equal(cancelled(), 1);
      const controller = new AbortController();
      const { error, events } = await refusal(
        (async function* () {
          for await (const event of c.chat(ASK, { signal: controller.signal })) {
            controller.abort();
            yield event;
          }
        })(),
      );
      assert.ok(error instanceof AbortedError, String(error));
      assert.equal(events.length, 1);
    });

    test("a chat: signed configurations, an OHTTP request with the device proof, the chunked answer", async () => {
      const { handler, seen, opened } = router([keysReply()], [answers(["Jupi", "ter ✓"])]);
      const events = await collect(client(handler).chat(ASK, { maxTokens: 64 }));
      assert.equal(text(events), "Jupiter ✓");
      assert.deepEqual(events[events.length - 1], { type: "done", finishReason: "stop", usage: { completion_tokens: 2 } });
      assert.deepEqual(opened[0]!.json.chat, { messages: ASK, max_tokens: 64 });
      assert.deepEqual([opened[0]!.json.v, opened[0]!.json.timestamp, opened[0]!.keyId], [2, NOW, 5]);
      assert.deepEqual(
        seen.map((s) => `${s.method} ${s.url}`),
        ["GET https://router.test/api/ohttp-keys", "POST https://router.test/api/ohttp"],
      );
    });

    test("the inner 401 stale: the clock is corrected from its date once, and the request sealed anew", async () => {
      const routerNow = NOW + 600;
      const { handler, opened } = router([keysReply()], [stale(routerNow), answers(["ok"]), answers(["again"])]);
      const c = client(handler);
      assert.equal(text(await collect(c.chat(ASK))), "ok");
      assert.equal(opened.length, 2);
      assert.equal(opened[0]!.json.timestamp, NOW);
      assert.equal(opened[1]!.json.timestamp, routerNow);
      assert.notEqual(hex(opened[0]!.enc), hex(opened[1]!.enc));
      // the offset stays: the next chat is on the router's time at once
      assert.equal(text(await collect(c.chat(ASK))), "again");
      assert.equal(opened[2]!.json.timestamp, routerNow);
      const { handler: h3, opened: o3 } = router([keysReply()], [stale(routerNow), stale(routerNow + 5)]);
      const { error } = await refusal(client(h3).chat(ASK));
      assert.ok(error instanceof ServerError && error.code === "stale" && error.status === null, String(error));
      assert.equal(o3.length, 2, "corrected once, not again");
    });

    test("proof of work: solved for this request's enc, the same bytes sent again with Privllm-Pow", async () => {
      const challenge = new Uint8Array(42).fill(0xab);
      const pow = (): Reply => ({ status: 429, body: JSON.stringify({ error: "pow_required", challenge: b64encode(challenge), difficulty: 8, expires: NOW + 60 }) });
      const { handler, seen, opened } = router([keysReply()], [pow, answers(["worked"])]);
      assert.equal(text(await collect(client(handler).chat(ASK))), "worked");
      const [first, second] = seen.filter((s) => s.method === "POST");
      assert.equal(first!.headers["privllm-pow"], undefined);
      assert.equal(hex(first!.body as unknown as Uint8Array), hex(second!.body as unknown as Uint8Array));
      const [c, nonce] = second!.headers["privllm-pow"]!.split(".");
      assert.equal(c, b64encode(challenge));
      assert.ok(leadingZeroBits(workHash(challenge, opened[1]!.enc, b64decode(nonce!, 8))) >= 8);
    });

    test("unknown_key: the configurations are fetched again past caches, once", async () => {
      const unknown = (): Reply => ({ status: 422, body: '{"error":"unknown_key"}' });
      const { handler, seen } = router([keysReply()], [unknown, answers(["ok"])]);
      assert.equal(text(await collect(client(handler).chat(ASK))), "ok");
      const fetches = seen.filter((s) => s.url.endsWith("/api/ohttp-keys"));
      assert.deepEqual(fetches.map((s) => s.cache ?? s.headers["cache-control"]), transport === "fetch" ? ["default", "reload"] : [undefined, "no-cache"]);
      const twice = router([keysReply()], [unknown, unknown]);
      const { error } = await refusal(client(twice.handler).chat(ASK));
      assert.ok(error instanceof ServerError && error.code === "unknown_key" && error.status === 422);
    });

    test("key configurations: wrong pin, bad signature, missing header, stale twice are refused; stale once is fetched again", async () => {
      const other = new Uint8Array(32).fill(0x77);
      const tampered = keysReply();
      tampered.body = concat(CONFIGS_BODY.subarray(0, 10), Uint8Array.of(CONFIGS_BODY[10]! ^ 1), CONFIGS_BODY.subarray(11));
      const missing = keysReply();
      delete missing.headers!["privllm-keys-signature"];
      for (const [name, reply, check] of [
        ["wrong pin", keysReply(NOW - 10, NOW + 3600, other), /pinned/],
        ["bad signature", tampered, /signature/],
        ["missing header", missing, /base64/],
      ] as const) {
        const { handler, seen } = router([reply], []);
        const { error } = await refusal(client(handler).chat(ASK));
        assert.ok(error instanceof ProtocolError && check.test(error.message), `${name}: ${String(error)}`);
        assert.equal(seen.length, 1, name);
      }
      const old = keysReply(NOW - 7200, NOW - 3600);
      const once = router([old, keysReply()], [answers(["fresh"])]);
      assert.equal(text(await collect(client(once.handler).chat(ASK))), "fresh");
      assert.deepEqual(once.seen.map((s) => s.cache ?? s.headers["cache-control"]), transport === "fetch" ? ["default", "reload", "default"] : [undefined, "no-cache", undefined]);
      const twice = router([old], []);
      const { error } = await refusal(client(twice.handler).chat(ASK));
      assert.ok(error instanceof StaleKeySetError);
    });

    test("answers: truncated after deltas, tampered, a sealed error, a sealed rate limit, a wrong content type", async () => {
      const cut: Post = (o) => {
        const s = new AnswerSealer(o.context);
        return { status: 200, headers: CHUNKED, body: concat(s.start(), s.event({ type: "delta", text: "half" })) };
      };
      let r = await refusal(client(router([keysReply()], [cut]).handler).chat(ASK));
      assert.ok(r.error instanceof TruncatedError);
      assert.equal(text(r.events), "half");

      const broken: Post = (o) => ({ ...answers(["x"])(o, {} as Seen), breakAfter: true, body: answer(o.context, ["x"]).subarray(0, 80) });
      r = await refusal(client(router([keysReply()], [broken]).handler).chat(ASK));
      assert.ok(r.error instanceof TruncatedError, String(r.error));

      const tampered: Post = (o) => {
        const body = answer(o.context, ["a", "b"]);
        body[body.length - 1]! ^= 1;
        return { status: 200, headers: CHUNKED, body };
      };
      r = await refusal(client(router([keysReply()], [tampered]).handler).chat(ASK));
      assert.ok(r.error instanceof ProtocolError && !(r.error instanceof TruncatedError), String(r.error));
      assert.equal(text(r.events), "ab");

      const sealedError = (code: string, extra: object = {}): Post => (o) => {
        const s = new AnswerSealer(o.context);
        return { status: 200, headers: CHUNKED, body: concat(s.start(), s.final({ type: "error", code, ...extra })) };
      };
      r = await refusal(client(router([keysReply()], [sealedError("overloaded")]).handler).chat(ASK));
      assert.ok(r.error instanceof ServerError && r.error.code === "overloaded" && r.error.status === null);
      r = await refusal(client(router([keysReply()], [sealedError("rate_limited", { retry_after: 30 })]).handler).chat(ASK));
      assert.ok(r.error instanceof RateLimitedError && r.error.retryAfter === 30);
      // a stale refusal with status 200 is only an error event: no clock correction, no resend
      const { handler, opened } = router([keysReply()], [sealedError("stale")]);
      r = await refusal(client(handler).chat(ASK));
      assert.ok(r.error instanceof ServerError && r.error.code === "stale");
      assert.equal(opened.length, 1);

      const wrongType: Post = (o) => ({ status: 200, headers: { "content-type": "text/event-stream" }, body: answer(o.context, ["x"]) });
      r = await refusal(client(router([keysReply()], [wrongType]).handler).chat(ASK));
      assert.ok(r.error instanceof ProtocolError && /ohttp-chunked-res/.test(r.error.message));

      const plain = (): Reply => ({ status: 503, body: '{"error":"unavailable"}', headers: { "retry-after": "5" } });
      r = await refusal(client(router([keysReply()], [plain]).handler).chat(ASK));
      assert.ok(r.error instanceof ServerError && r.error.code === "unavailable" && r.error.status === 503 && r.error.retryAfter === 5);
    });

    test("a chunk after the final one and a delta in the final chunk are refused", async () => {
      const after: Post = (o) => {
        const s = new AnswerSealer(o.context);
        return { status: 200, headers: CHUNKED, body: concat(s.start(), s.final(DONE), s.seal(AnswerSealer.content(s.line({ type: "delta", text: "more" })))) };
      };
      let r = await refusal(client(router([keysReply()], [after]).handler).chat(ASK));
      assert.ok(r.error instanceof ProtocolError && !(r.error instanceof TruncatedError), String(r.error));
      const deltaFinal: Post = (o) => {
        const s = new AnswerSealer(o.context);
        return { status: 200, headers: CHUNKED, body: concat(s.start(), s.seal(concat(AnswerSealer.content(s.line({ type: "delta", text: "x" })), AnswerSealer.END), true)) };
      };
      r = await refusal(client(router([keysReply()], [deltaFinal]).handler).chat(ASK));
      assert.ok(r.error instanceof ProtocolError && !(r.error instanceof TruncatedError), String(r.error));
    });
  });
}

test("protocol 2 over an XMLHttpRequest without overrideMimeType: a TypeError, nothing sent", async () => {
  const { handler, seen } = router([keysReply()], []);
  const { Xhr } = fakeXhr(handler);
  class Plain extends Xhr {}
  Object.defineProperty(Plain.prototype, "overrideMimeType", { value: undefined });
  const storage = new MemoryKeyStore();
  const c = new PrivllmClient({ url: "https://router.test", pin: IDENTITY, now: () => NOW * 1000, storage, transport: "xhr", XMLHttpRequest: Plain, protocol: 2 });
  const { error } = await refusal(c.chat(ASK));
  assert.ok(error instanceof TypeError && /overrideMimeType|bytes/.test(error.message), String(error));
  assert.equal(seen.length, 0);
});

test("protocol must be 1 or 2", () => {
  assert.throws(() => new PrivllmClient({ url: "https://router.test", pin: IDENTITY, fetch: fakeFetch(() => ({ status: 500 })).fetch, protocol: 3 as 2 }), TypeError);
});
