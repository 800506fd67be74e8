/** The plaintext chat request (privllm/protocol/chat.py) and its sealed envelope (docs/protocol.md). */
import { b64encode, b64url, isScalarText, utf8 } from "./encoding.js";
import { setupAuthS, x25519Public } from "./hpke.js";
import type { Context } from "./hpke.js";

export type Role = "system" | "user" | "assistant";
export interface Message {
  role: Role;
  content: string;
}
export type Verbosity = "brief" | "normal" | "detailed";
export type ReasoningEffort = "low" | "medium" | "high";

export interface ChatParameters {
  maxTokens?: number;
  verbosity?: Verbosity;
  reasoningEffort?: ReasoningEffort;
  temperature?: number;
}

const REQUEST_INFO = utf8("privllm/v1 request");
const RESPONSE_LABEL = utf8("privllm/v1 response");
const ROLES: readonly string[] = ["system", "user", "assistant"];
const VERBOSITY: readonly string[] = ["brief", "normal", "detailed"];
const EFFORT: readonly string[] = ["low", "medium", "high"];

/** The plaintext's JSON, checked as the router would (a mistake here is the caller's, so a TypeError). */
export function chatPlaintext(messages: readonly Message[], params: ChatParameters): string {
  if (messages.length === 0 || messages[messages.length - 1]!.role !== "user") {
    throw new TypeError("messages must end with the user's message");
  }
  for (const m of messages) {
    if (!ROLES.includes(m.role) || typeof m.content !== "string" || !isScalarText(m.content)) {
      throw new TypeError("each message needs a role and a content of Unicode text");
    }
  }
  const body: Record<string, unknown> = { messages: messages.map((m) => ({ role: m.role, content: m.content })) };
  if (params.maxTokens !== undefined) {
    if (!Number.isInteger(params.maxTokens) || params.maxTokens < 1 || params.maxTokens > 2 ** 31 - 1) throw new TypeError("maxTokens must be a positive integer");
    body.max_tokens = params.maxTokens;
  }
  if (params.temperature !== undefined) {
    if (!(params.temperature >= 0 && params.temperature <= 2)) throw new TypeError("temperature must lie in [0, 2]");
    body.temperature = params.temperature;
  }
  if (params.verbosity !== undefined) {
    if (!VERBOSITY.includes(params.verbosity)) throw new TypeError("verbosity must be brief, normal or detailed");
    body.verbosity = params.verbosity;
  }
  if (params.reasoningEffort !== undefined) {
    if (!EFFORT.includes(params.reasoningEffort)) throw new TypeError("reasoningEffort must be low, medium or high");
    body.reasoning_effort = params.reasoningEffort;
  }
  return JSON.stringify(body);
}

export function requestAad(keyId: number, timestamp: number, requestId: string): Uint8Array {
  return utf8(`privllm/v1|${keyId}|${timestamp}|${requestId}`);
}

/** 24 random bytes, base64url: 32 characters of A-Z a-z 0-9 _ - as the router requires. */
export function newRequestId(random: (n: number) => Uint8Array): string {
  return b64url(random(24));
}

/** A sender context made before the message (it does not depend on it): seal with it once. */
export interface Encapsulation {
  routerPublicKey: Uint8Array;
  enc: Uint8Array;
  context: Context;
  devicePublicKey: Uint8Array;
}

/** `devicePublicKey` may be given to save a scalar multiplication (the client keeps it). */
export function encapsulate(
  routerPublicKey: Uint8Array,
  devicePrivateKey: Uint8Array,
  ephemeral: Uint8Array,
  devicePublicKey: Uint8Array = x25519Public(devicePrivateKey),
): Encapsulation {
  const { enc, context } = setupAuthS(routerPublicKey, devicePrivateKey, REQUEST_INFO, ephemeral, devicePublicKey);
  return { routerPublicKey, enc, context, devicePublicKey };
}

export interface RequestBody {
  v: 1;
  key_id: number;
  encapsulated_key: string;
  device_pubkey: string;
  timestamp: number;
  request_id: string;
  aad: string;
  ciphertext: string;
  pow?: { challenge: string; nonce: string };
}

export interface SealedRequest {
  body: RequestBody;
  enc: Uint8Array;
  responseSecret: Uint8Array;
}

/** Seal the plaintext with an encapsulation (used up here) for key `keyId`. */
export function sealRequest(encapsulation: Encapsulation, keyId: number, plaintext: string, timestamp: number, requestId: string): SealedRequest {
  const aad = requestAad(keyId, timestamp, requestId);
  const ciphertext = encapsulation.context.seal(aad, utf8(plaintext));
  const body: RequestBody = {
    v: 1,
    key_id: keyId,
    encapsulated_key: b64encode(encapsulation.enc),
    device_pubkey: b64encode(encapsulation.devicePublicKey),
    timestamp,
    request_id: requestId,
    aad: b64encode(aad),
    ciphertext: b64encode(ciphertext),
  };
  return { body, enc: encapsulation.enc, responseSecret: encapsulation.context.export(RESPONSE_LABEL, 32) };
}
