/** PrivllmClient: the key set behind a pin, sealed requests, streamed answers opened as they arrive. */
import { b64decode, b64encode, concat, equalBytes, fromUtf8, isObject, parseBounded } from "./encoding.js";
import type { JsonObject } from "./encoding.js";
import { AbortedError, NetworkError, PrivllmError, ProtocolError, RateLimitedError, ServerError, TruncatedError } from "./errors.js";
import { checkFresh, chooseKey, StaleKeySetError, verifyKeySet, MAX_KEYSET_BYTES } from "./keyset.js";
import type { KeySet, PublishedKey } from "./keyset.js";
import { CHALLENGE_SIZE, POW_MAX_DIFFICULTY, solve } from "./pow.js";
import { chatPlaintext, encapsulate, newRequestId, sealRequest } from "./request.js";
import type { ChatParameters, Encapsulation, Message, RequestBody, SealedRequest } from "./request.js";
import { x25519Public } from "./hpke.js";
import { ResponseReader } from "./stream.js";
import { prepareV2, ResponseReaderV2, sealChatRequest, verifyKeyConfigs } from "./v2.js";
import type { KeyConfigSet, SealedV2 } from "./v2.js";
import type { KeyConfig, OhttpSender } from "./ohttp.js";
import type { Chunk } from "./stream.js";
import { chooseTransport } from "./transport.js";
import type { HttpResponse, Transport, TransportName, XhrConstructor } from "./transport.js";

/** The most a v2 router's date may move this device's clock (its answer is authenticated, but only by the router key). */
const MAX_CLOCK_CORRECTION = 86400;

/** Where the device key lives (an app: the platform's secure storage). */
export interface KeyStore {
  get(): Promise<Uint8Array | null>;
  set(key: Uint8Array): Promise<void>;
}

/** Keeps the device key for this process only: each run is a new device to the router. */
export class MemoryKeyStore implements KeyStore {
  private key: Uint8Array | null = null;
  async get(): Promise<Uint8Array | null> {
    return this.key;
  }
  async set(key: Uint8Array): Promise<void> {
    this.key = key.slice();
  }
}

export interface ClientOptions {
  url: string;
  pin: Uint8Array | string;
  fetch?: typeof fetch;
  now?: () => number;
  random?: (n: number) => Uint8Array;
  storage?: KeyStore;
  transport?: TransportName;
  XMLHttpRequest?: XhrConstructor;
  powCeiling?: number;
  /** Longest wait for the next sealed chunk while an answer streams (keepalives do not count), ms. */
  idleTimeoutMs?: number;
  /** 1 (default): POST /api/chat. 2: Oblivious HTTP (RFC 9458) to POST /api/ohttp, which a relay can carry. */
  protocol?: 1 | 2;
}

export interface ChatOptions extends ChatParameters {
  signal?: AbortSignal;
}

export type ChatEvent = { type: "delta"; text: string } | { type: "done"; finishReason: string; usage: Record<string, number> };

const MAX_ERROR_BYTES = 4096;
const ERROR_CODE = /^[a-z_]{1,32}$/;
const MAX_RETRY_AFTER = 86400;
/** Like the Python client's STREAM_IDLE_TIMEOUT: the router sends a keepalive after 15 s without an event. */
const IDLE_TIMEOUT_MS = 90_000;

const ROUTER_URL = /^https:\/\/(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\/?$/;

/** https://host[:port] with nothing after it: the base the client adds /api/... to. */
function routerUrl(text: string): string {
  if (!ROUTER_URL.test(text)) throw new TypeError("the router URL must be https://host[:port]");
  return text.replace(/\/$/, "");
}

/** A code from the router, or "unknown": arbitrary server text is never repeated to the user. */
function errorCode(value: unknown): string {
  return typeof value === "string" && ERROR_CODE.test(value) ? value : "unknown";
}

/** Retry-After in whole seconds, or null for anything else (an absurd value is not repeated). */
function retryAfter(value: string | null | number | undefined): number | null {
  const text = typeof value === "number" && Number.isSafeInteger(value) ? String(value) : value;
  if (typeof text !== "string" || !/^[0-9]{1,6}$/.test(text)) return null;
  const seconds = Number(text);
  return seconds <= MAX_RETRY_AFTER ? seconds : null;
}

/** The platform's secure random source; there is no weaker fallback (keys and nonces come from it). */
function defaultRandom(): (n: number) => Uint8Array {
  const c = (globalThis as { crypto?: { getRandomValues?: (b: Uint8Array) => Uint8Array } }).crypto;
  if (typeof c?.getRandomValues !== "function") {
    throw new TypeError("no secure random source: install react-native-get-random-values (imported first) or pass `random`");
  }
  return (n) => c.getRandomValues!(new Uint8Array(n));
}

/** A small body, at most `limit` bytes: a longer one is cut and refused. */
async function readSmall(response: HttpResponse, limit: number): Promise<string> {
  return fromUtf8(await readBytes(response, limit));
}

/** A binary body, at most `limit` bytes: a longer one is cut and refused. */
async function readBytes(response: HttpResponse, limit: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const part of response.body) {
    size += part.length;
    if (size > limit) throw new ProtocolError("the router's answer is too large");
    parts.push(part);
  }
  return concat(...parts);
}

export class PrivllmClient {
  private readonly base: string;
  private readonly pin: Uint8Array;
  private readonly now: () => number;
  private readonly random: (n: number) => Uint8Array;
  private readonly storage: KeyStore;
  private readonly transport: Transport;
  private readonly powCeiling: number;
  private readonly idleTimeoutMs: number;
  private devicePending: Promise<{ privateKey: Uint8Array; publicKey: Uint8Array }> | null = null;
  private keySet: KeySet | null = null;
  private prepared: Encapsulation | null = null;
  private deviceKey: { privateKey: Uint8Array; publicKey: Uint8Array } | null = null;
  private readonly protocol: 1 | 2;
  private configs: KeyConfigSet | null = null;
  private preparedV2: OhttpSender | null = null;
  /** Seconds to add to this device's clock: set from the router's `date` when it refused a request as stale (v2). */
  private clockOffset = 0;

  constructor(options: ClientOptions) {
    this.base = routerUrl(options.url);
    this.pin = typeof options.pin === "string" ? b64decode(options.pin, 32) : options.pin.slice();
    if (this.pin.length !== 32) throw new TypeError("the pin is a 32-byte Ed25519 public key");
    this.now = options.now ?? Date.now;
    this.random = options.random ?? defaultRandom();
    this.idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    if (!(this.idleTimeoutMs > 0)) throw new TypeError("idleTimeoutMs must be positive");
    this.storage = options.storage ?? new MemoryKeyStore();
    this.protocol = options.protocol ?? 1;
    if (this.protocol !== 1 && this.protocol !== 2) throw new TypeError("protocol must be 1 or 2");
    this.powCeiling = options.powCeiling ?? POW_MAX_DIFFICULTY;
    if (!Number.isInteger(this.powCeiling) || this.powCeiling < 1 || this.powCeiling > POW_MAX_DIFFICULTY) {
      throw new TypeError(`powCeiling must be between 1 and ${POW_MAX_DIFFICULTY}`);
    }
    const g = globalThis as { fetch?: typeof fetch; XMLHttpRequest?: XhrConstructor };
    const fetchFn = options.fetch ?? (g.fetch !== undefined ? g.fetch.bind(globalThis) : undefined);
    this.transport = chooseTransport(options.transport ?? "auto", fetchFn, options.XMLHttpRequest ?? g.XMLHttpRequest);
  }

  /** The device's clock, corrected by what a v2 router said: a request's timestamp only. */
  private seconds(): number {
    return this.rawSeconds() + this.clockOffset;
  }

  /** The device's own clock: key set and key configuration freshness, which a router's date must not move. */
  private rawSeconds(): number {
    return Math.floor(this.now() / 1000);
  }

  /** The device's X25519 key: made on first use and kept in the KeyStore; it authenticates every request. */
  private device(): Promise<{ privateKey: Uint8Array; publicKey: Uint8Array }> {
    // single flight: prepare() and chat() started together must not make two device keys
    this.devicePending ??= this.loadDevice().catch((e: unknown) => {
      this.devicePending = null;
      throw e;
    });
    return this.devicePending;
  }

  private async loadDevice(): Promise<{ privateKey: Uint8Array; publicKey: Uint8Array }> {
    if (this.deviceKey === null) {
      let key = await this.storage.get();
      if (key === null) {
        key = this.random(32);
        await this.storage.set(key);
      }
      if (key.length !== 32) throw new PrivllmError("the stored device key is not 32 bytes");
      this.deviceKey = { privateKey: key, publicKey: x25519Public(key) };
    }
    return this.deviceKey;
  }

  /** Fetch and verify the key set; a stale one (an old cached or replayed copy) is fetched once more past caches. */
  private async fetchKeys(signal?: AbortSignal): Promise<KeySet> {
    for (let attempt = 0; ; attempt++) {
      const response = await this.transport({
        method: "GET",
        url: `${this.base}/api/pubkey`,
        headers: {},
        reload: attempt > 0,
        signal,
      });
      if (response.status !== 200) {
        await readSmall(response, MAX_ERROR_BYTES).catch((e: unknown) => {
          if (e instanceof AbortedError) throw e;
        });
        throw new ServerError("pubkey_unavailable", response.status);
      }
      const text = await readSmall(response, MAX_KEYSET_BYTES);
      try {
        this.keySet = verifyKeySet(text, this.pin, this.rawSeconds());
        return this.keySet;
      } catch (e) {
        if (!(e instanceof StaleKeySetError) || attempt > 0) throw e;
      }
    }
  }

  /** The set held while it is fresh, else a newly fetched one. */
  private async currentKeys(signal?: AbortSignal): Promise<KeySet> {
    if (this.keySet !== null) {
      try {
        checkFresh(this.keySet, this.rawSeconds());
        return this.keySet;
      } catch {
        this.keySet = null;
      }
    }
    return this.fetchKeys(signal);
  }

  /** Make the next chat's HPKE encapsulation now, while the user writes (it does not depend on the message). */
  async prepare(): Promise<void> {
    if (this.protocol === 2) {
      this.preparedV2 = prepareV2(chooseConfig(await this.currentConfigs()), this.random(32));
      return;
    }
    const key = chooseKey((await this.currentKeys()).keys, this.seconds());
    if (key !== null) this.prepared = await this.encapsulate(key.publicKey);
  }

  private async encapsulate(routerPublicKey: Uint8Array): Promise<Encapsulation> {
    const device = await this.device();
    return encapsulate(routerPublicKey, device.privateKey, this.random(32), device.publicKey);
  }

  private async seal(plaintext: string, key: PublishedKey, requestId: string): Promise<SealedRequest> {
    let encapsulation = this.prepared;
    this.prepared = null; // an encapsulation seals once
    if (encapsulation === null || !equalBytes(encapsulation.routerPublicKey, key.publicKey)) {
      encapsulation = await this.encapsulate(key.publicKey);
    }
    return sealRequest(encapsulation, key.keyId, plaintext, this.seconds(), requestId);
  }

  /** One chat: the decrypted deltas as they arrive, then `done`; or one PrivllmError. Retries once on unknown_key. */
  async *chat(messages: Message[], options: ChatOptions = {}): AsyncGenerator<ChatEvent, void, undefined> {
    const plaintext = chatPlaintext(messages, options);
    const signal = options.signal;
    if (signal?.aborted) throw new AbortedError();
    if (this.protocol === 2) {
      yield* this.chatV2(plaintext, signal);
      return;
    }
    for (let attempt = 0; ; attempt++) {
      const key = chooseKey((await this.currentKeys(signal)).keys, this.seconds());
      if (key !== null) {
        let answered = false;
        try {
          for await (const event of this.chatOnce(plaintext, key, signal)) {
            answered = true;
            yield event;
          }
          return;
        } catch (e) {
          // Only the plaintext refusal (status set, before any delta) is retried: a sealed error ends the
          // answer, and resending after deltas would join two answers.
          const refused = e instanceof ServerError && e.code === "unknown_key" && e.status !== null && !answered;
          if (!refused || attempt > 0) throw e;
        }
      } else if (attempt > 0) throw new ProtocolError("the key set holds no key valid now");
      this.keySet = null;
    }
  }

  private async *chatOnce(plaintext: string, key: PublishedKey, signal?: AbortSignal): AsyncGenerator<ChatEvent, void, undefined> {
    const requestId = newRequestId(this.random);
    const sealed = await this.seal(plaintext, key, requestId);
    const body: RequestBody = sealed.body;
    // The transport's own signal: the caller's abort, or the idle timer's.
    const transportAbort = new AbortController();
    const forward = (): void => transportAbort.abort();
    signal?.addEventListener("abort", forward);
    try {
      yield* this.post(plaintext, key, requestId, sealed, body, signal, transportAbort);
    } finally {
      signal?.removeEventListener("abort", forward);
    }
  }

  private async *post(
    plaintext: string,
    key: PublishedKey,
    requestId: string,
    sealed: SealedRequest,
    body: RequestBody,
    signal: AbortSignal | undefined,
    transportAbort: AbortController,
  ): AsyncGenerator<ChatEvent, void, undefined> {
    if (signal?.aborted) throw new AbortedError();
    for (let attempt = 0; ; attempt++) {
      const response = await this.transport({
        method: "POST",
        url: `${this.base}/api/chat`,
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: transportAbort.signal,
      });
      if (response.status === 200) {
        yield* this.readStream(response, sealed, () => transportAbort.abort());
        void this.prepare().catch(() => undefined); // idle now, until the next message
        return;
      }
      const details = await this.plaintextError(response);
      if (details.error !== "pow_required" || attempt >= 2) throw refusal(response, details);
      const pow = await this.solve(details, requestId, signal);
      // Sealed again after the work (which can outlast the timestamp window), with the id the work is bound to.
      sealed = await this.seal(plaintext, key, requestId);
      body = { ...sealed.body, pow };
    }
  }

  private async plaintextError(response: HttpResponse): Promise<JsonObject> {
    let details: JsonObject = {};
    try {
      const parsed = parseBounded(await readSmall(response, MAX_ERROR_BYTES), MAX_ERROR_BYTES, 1);
      if (isObject(parsed)) details = parsed;
    } catch (e) {
      if (e instanceof AbortedError) throw e;
    }
    return details;
  }

  private async solve(challenge: JsonObject, bound: string | Uint8Array, signal?: AbortSignal): Promise<{ challenge: string; nonce: string }> {
    const difficulty = challenge.difficulty;
    const raw = b64decode(challenge.challenge, CHALLENGE_SIZE);
    if (typeof difficulty !== "number" || !Number.isSafeInteger(difficulty) || difficulty < 1) {
      throw new ProtocolError("malformed proof-of-work challenge");
    }
    if (difficulty > this.powCeiling) {
      throw new ServerError("pow_required", 429, null, `the router asks for ${difficulty} bits of proof of work, above this client's ceiling of ${this.powCeiling}`);
    }
    const nonce = await solve(raw, bound, difficulty, signal);
    return { challenge: challenge.challenge as string, nonce: b64encode(nonce) };
  }

  /** Deltas as they open; the final chunk's verdict only once the body has ended (nothing may follow it). */
  private async *readStream(response: HttpResponse, sealed: SealedRequest, stop: () => void): AsyncGenerator<ChatEvent, void, undefined> {
    const reader = new ResponseReader(sealed.enc, sealed.responseSecret);
    let final: Chunk | null = null;
    const idle = new IdleTimer(this.idleTimeoutMs, stop);
    const body = response.body[Symbol.asyncIterator]();
    let done = false;
    try {
      for (;;) {
        const next = await idle.race(body.next());
        if (next.done) break;
        const before = reader.progress;
        const chunks = reader.feed(next.value);
        if (reader.progress !== before) idle.restart(); // a sealed event, not a keepalive
        for (const chunk of chunks) {
          if (chunk.type === "delta") yield { type: "delta", text: chunk.text };
          else final = chunk;
        }
      }
      done = true;
    } catch (e) {
      done = true;
      // A connection that breaks before the final chunk cut the answer; after it, nothing was lost.
      if (!(e instanceof NetworkError)) throw e;
      if (!reader.finished) throw new TruncatedError("the connection broke before the final chunk");
    } finally {
      idle.clear();
      if (!done) void body.return?.()?.catch(() => undefined); // the consumer stopped early: cancel the body
    }
    reader.end();
    if (final === null) throw new ProtocolError("no final chunk"); // unreachable: end() checked it
    if (final.type === "done") {
      yield { type: "done", finishReason: final.finish_reason, usage: final.usage };
      return;
    }
    if (final.type === "error") {
      if (final.code === "rate_limited") throw new RateLimitedError(retryAfter(final.retry_after as number | undefined), null);
      throw new ServerError(errorCode(final.code), null, retryAfter(final.retry_after as number | undefined));
    }
  }

  // Protocol v2: the same flow over Oblivious HTTP. Key configurations signed in headers, the request sealed in
  // HPKE base mode with the device proof inside, the answer a chunked OHTTP response.

  /** GET /api/ohttp-keys and verify it; a stale copy is fetched once more past caches, as in v1. */
  private async fetchConfigs(signal?: AbortSignal, pastCaches = false): Promise<KeyConfigSet> {
    for (let attempt = 0; ; attempt++) {
      const reload = pastCaches || attempt > 0;
      const response = await this.transport({ method: "GET", url: `${this.base}/api/ohttp-keys`, headers: {}, reload, binary: true, signal });
      if (response.status !== 200) {
        await readSmall(response, MAX_ERROR_BYTES).catch((e: unknown) => {
          if (e instanceof AbortedError) throw e;
        });
        throw new ServerError("pubkey_unavailable", response.status);
      }
      const body = await readBytes(response, MAX_KEYSET_BYTES);
      const headers = {
        signingKey: response.header("privllm-keys-signing-key"),
        issued: response.header("privllm-keys-issued"),
        expires: response.header("privllm-keys-expires"),
        signature: response.header("privllm-keys-signature"),
      };
      try {
        this.configs = verifyKeyConfigs(body, headers, this.pin, this.rawSeconds());
        return this.configs;
      } catch (e) {
        if (!(e instanceof StaleKeySetError) || attempt > 0) throw e;
      }
    }
  }

  private async currentConfigs(signal?: AbortSignal): Promise<KeyConfigSet> {
    if (this.configs !== null) {
      try {
        checkFresh(this.configs, this.rawSeconds());
        return this.configs;
      } catch {
        this.configs = null;
      }
    }
    return this.fetchConfigs(signal);
  }

  /** Seal with the prepared context if it is for this configuration, else a fresh one. */
  private async sealV2(plaintext: string, config: KeyConfig): Promise<SealedV2> {
    const device = await this.device();
    let sender = this.preparedV2;
    this.preparedV2 = null; // an encapsulation seals once
    if (sender === null || sender.keyId !== config.keyId || !equalBytes(sender.publicKey, config.publicKey)) {
      sender = prepareV2(config, this.random(32));
    }
    return sealChatRequest(sender, device.privateKey, device.publicKey, plaintext, this.seconds());
  }

  /** Retries once on a plaintext unknown_key (configurations fetched again past caches), once on the sealed stale
   * refusal (the clock corrected from the router's date); each retry is a new encapsulation. */
  private async *chatV2(plaintext: string, signal?: AbortSignal): AsyncGenerator<ChatEvent, void, undefined> {
    let refetched = false;
    let corrected = false;
    let refetch = false;
    for (;;) {
      // after unknown_key, past caches: the configurations are public for 5 minutes (Cache-Control)
      const config = chooseConfig(refetch ? await this.fetchConfigs(signal, true) : await this.currentConfigs(signal));
      refetch = false;
      let answered = false;
      try {
        for await (const event of this.postV2(await this.sealV2(plaintext, config), signal)) {
          answered = true;
          yield event;
        }
        return;
      } catch (e) {
        if (e instanceof StaleRequest && !corrected) {
          corrected = true;
          const offset = e.date - this.rawSeconds();
          if (Math.abs(offset) > MAX_CLOCK_CORRECTION) {
            throw new ProtocolError(`the router's date is ${offset} s from this device's clock: more than a day, not taken`);
          }
          this.clockOffset = offset;
          continue;
        }
        if (e instanceof StaleRequest) throw new ServerError("stale", null, null, "the router refused the request as stale twice (is this device's clock right?)");
        const refused = e instanceof ServerError && e.code === "unknown_key" && e.status !== null && !answered;
        if (!refused || refetched) throw e;
        refetched = refetch = true;
      }
    }
  }

  private async *postV2(sealed: SealedV2, signal: AbortSignal | undefined): AsyncGenerator<ChatEvent, void, undefined> {
    const transportAbort = new AbortController();
    const forward = (): void => transportAbort.abort();
    signal?.addEventListener("abort", forward);
    try {
      const headers: Record<string, string> = { "Content-Type": "message/ohttp-req", Accept: "message/ohttp-chunked-res" };
      for (let attempt = 0; ; attempt++) {
        if (signal?.aborted) throw new AbortedError();
        const response = await this.transport({ method: "POST", url: `${this.base}/api/ohttp`, headers, body: sealed.body, binary: true, signal: transportAbort.signal });
        if (response.status === 200) {
          if ((response.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase() !== "message/ohttp-chunked-res") {
            throw new ProtocolError("the answer is not message/ohttp-chunked-res");
          }
          yield* this.readStreamV2(response, sealed, () => transportAbort.abort());
          void this.prepare().catch(() => undefined); // idle now, until the next message
          return;
        }
        const details = await this.plaintextError(response);
        if (details.error !== "pow_required" || attempt >= 2) throw refusal(response, details);
        // The work is bound to enc, so the same bytes go again (a new seal would be a new enc); should the work
        // outlast the timestamp window, the router's stale refusal brings a new encapsulation.
        const pow = await this.solve(details, sealed.enc, signal);
        headers["Privllm-Pow"] = `${pow.challenge}.${pow.nonce}`;
      }
    } finally {
      signal?.removeEventListener("abort", forward);
    }
  }

  /** As readStream (v1): deltas as they open, the final verdict once the body has ended. */
  private async *readStreamV2(response: HttpResponse, sealed: SealedV2, stop: () => void): AsyncGenerator<ChatEvent, void, undefined> {
    const reader = new ResponseReaderV2(sealed.context);
    const idle = new IdleTimer(this.idleTimeoutMs, stop);
    const body = response.body[Symbol.asyncIterator]();
    let done = false;
    try {
      for (;;) {
        const next = await idle.race(body.next());
        if (next.done) break;
        const before = reader.progress;
        for (const chunk of reader.feed(next.value)) {
          if (chunk.type === "delta") yield { type: "delta", text: chunk.text };
        }
        if (reader.progress !== before) idle.restart();
      }
      done = true;
    } catch (e) {
      done = true;
      throw e instanceof NetworkError ? new TruncatedError("the connection broke before the final chunk") : e;
    } finally {
      idle.clear();
      if (!done) void body.return?.()?.catch(() => undefined); // the consumer stopped early: cancel the body
    }
    const final = reader.end()[0];
    if (final === undefined || final.type === "delta") throw new ProtocolError("no final event"); // unreachable: end() checked it
    if (final.type === "done") {
      yield { type: "done", finishReason: final.finish_reason, usage: final.usage };
      return;
    }
    if (reader.status === 401 && final.code === "stale" && reader.date !== null) throw new StaleRequest(reader.date);
    if (final.code === "rate_limited") throw new RateLimitedError(retryAfter(final.retry_after as number | undefined), null);
    throw new ServerError(errorCode(final.code), null, retryAfter(final.retry_after as number | undefined));
  }
}

/** The router's sealed stale refusal: its clock (`date`, Unix seconds) for this device's to follow. */
class StaleRequest extends Error {
  constructor(readonly date: number) {
    super("stale");
  }
}

/** The first configuration the router lists (each is a live key of its ring). */
function chooseConfig(set: KeyConfigSet): KeyConfig {
  return set.configs[0]!;
}

function refusal(response: HttpResponse, details: JsonObject): PrivllmError {
  const code = errorCode(details.error);
  const wait = retryAfter(response.header("retry-after"));
  if (code === "rate_limited") return new RateLimitedError(wait, response.status);
  return new ServerError(code, response.status, wait);
}

/** Fails a wait with TruncatedError when no sealed chunk came for `ms`, and stops the transport. */
class IdleTimer {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private fire: () => void = () => undefined;
  private readonly expired: Promise<never>;

  constructor(
    private readonly ms: number,
    private readonly stop: () => void,
  ) {
    this.expired = new Promise<never>((_, reject) => {
      this.fire = () => {
        this.stop();
        reject(new TruncatedError(`no sealed chunk for ${Math.round(this.ms / 1000)} s`));
      };
    });
    this.expired.catch(() => undefined);
    this.restart();
  }

  restart(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fire(), this.ms);
  }

  clear(): void {
    clearTimeout(this.timer);
  }

  race<T>(wait: Promise<T>): Promise<T> {
    wait.catch(() => undefined); // an abort after the timeout rejects it later: not unhandled
    return Promise.race([wait, this.expired]);
  }
}
