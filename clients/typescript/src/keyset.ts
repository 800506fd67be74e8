/** The router's signed key set: shape, pinned Ed25519 signature over JCS, freshness, and the key to use. */
import { ed25519 } from "@noble/curves/ed25519.js";
import { b64decode, canonicalJson, equalBytes, hasExactly, isObject, parseBounded, utf8 } from "./encoding.js";
import type { Json, JsonObject } from "./encoding.js";
import { ProtocolError } from "./errors.js";

export const KEYSET_CLOCK_SKEW = 60;
export const MAX_KEYSET_LIFETIME = 86400;
export const MAX_KEYSET_BYTES = 16384;
const MAX_KEYS = 8;
const MEMBERS = ["v", "kem_id", "kdf_id", "aead_id", "keys", "issued_at", "expires", "signing_key", "signature"];
const KEY_MEMBERS = ["key_id", "public_key", "not_before", "not_after", "status"];

export interface PublishedKey {
  keyId: number;
  publicKey: Uint8Array;
  notBefore: number;
  notAfter: number;
  status: "current" | "next";
}

export interface KeySet {
  keys: PublishedKey[];
  issuedAt: number;
  expires: number;
}

/** Well signed, but not valid at this clock: a cache or a replayer served it; fetch once more. */
export class StaleKeySetError extends ProtocolError {
  override name = "StaleKeySetError";
}

function integer(value: Json | undefined, low: number, high: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < low || value > high) {
    throw new ProtocolError("malformed key set");
  }
  return value;
}

function publishedKey(item: Json): PublishedKey {
  if (!isObject(item) || !hasExactly(item, KEY_MEMBERS) || (item.status !== "current" && item.status !== "next")) {
    throw new ProtocolError("malformed key set");
  }
  const key: PublishedKey = {
    keyId: integer(item.key_id, 0, 255),
    publicKey: b64decode(item.public_key, 32),
    notBefore: integer(item.not_before, 0, Number.MAX_SAFE_INTEGER),
    notAfter: integer(item.not_after, 0, Number.MAX_SAFE_INTEGER),
    status: item.status,
  };
  if (key.notAfter <= key.notBefore) throw new ProtocolError("malformed key set");
  return key;
}

/** The client rule of docs/protocol.md: valid from issued_at to expires, each end widened by the skew. */
export function checkFresh(set: Pick<KeySet, "issuedAt" | "expires">, now: number): void {
  if (now + KEYSET_CLOCK_SKEW < set.issuedAt) throw new StaleKeySetError("the key set is not valid yet (is this device's clock right?)");
  if (now >= set.expires + KEYSET_CLOCK_SKEW) throw new StaleKeySetError("the key set has expired");
}

/** Verify the text of GET /api/pubkey against the pinned identity key at `now` (Unix seconds).
 * Throws ProtocolError (StaleKeySetError for a well-signed set outside its window). */
export function verifyKeySet(text: string, pin: Uint8Array, now: number): KeySet {
  const doc = parseBounded(text, MAX_KEYSET_BYTES, 3);
  if (!isObject(doc) || !hasExactly(doc, MEMBERS)) throw new ProtocolError("malformed key set");
  const signature = b64decode(doc.signature, 64);
  if (!equalBytes(b64decode(doc.signing_key, 32), pin)) throw new ProtocolError("key set signed by a key other than the pinned identity");
  const signed: JsonObject = { ...doc };
  delete signed.signature;
  if (!ed25519.verify(signature, utf8(canonicalJson(signed)), pin, { zip215: false })) {
    throw new ProtocolError("key set has a bad signature");
  }
  if (doc.v !== 1 || doc.kem_id !== 32 || doc.kdf_id !== 1 || doc.aead_id !== 3) throw new ProtocolError("unsupported suite");
  const issuedAt = integer(doc.issued_at, 0, Number.MAX_SAFE_INTEGER);
  const expires = integer(doc.expires, issuedAt + 1, issuedAt + MAX_KEYSET_LIFETIME);
  const keys = doc.keys;
  if (!Array.isArray(keys) || keys.length < 1 || keys.length > MAX_KEYS) throw new ProtocolError("malformed key set");
  const set = { keys: keys.map(publishedKey), issuedAt, expires };
  checkFresh(set, now);
  return set;
}

/** The current key whose window holds `now`, else any key whose window does (earliest first); null if none. */
export function chooseKey(keys: PublishedKey[], now: number): PublishedKey | null {
  const usable = keys.filter((k) => k.notBefore <= now && now < k.notAfter);
  usable.sort((a, b) => Number(a.status !== "current") - Number(b.status !== "current") || a.notBefore - b.notBefore);
  return usable[0] ?? null;
}
