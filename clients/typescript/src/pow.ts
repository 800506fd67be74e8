/** Proof of work: find nonce with SHA-256(challenge || bound || nonce) starting with `difficulty` zero bits; the work
 * is bound to the request: its request_id in protocol v1, its encapsulated key (enc) in protocol v2. */
import { sha256 } from "@noble/hashes/sha2.js";
import { concat, utf8 } from "./encoding.js";
import { AbortedError, ProtocolError } from "./errors.js";

export const POW_MAX_DIFFICULTY = 24; // the protocol's ceiling: the demand is not authenticated
export const CHALLENGE_SIZE = 42;

export function leadingZeroBits(digest: Uint8Array): number {
  let bits = 0;
  for (const byte of digest) {
    if (byte !== 0) return bits + Math.clz32(byte) - 24;
    bits += 8;
  }
  return bits;
}

export function workHash(challenge: Uint8Array, bound: string | Uint8Array, nonce: Uint8Array): Uint8Array {
  return sha256(concat(challenge, typeof bound === "string" ? utf8(bound) : bound, nonce));
}

/** Tries 8-byte big-endian counters 0, 1, 2, ... as privllm's solver does. Yields to the event loop every
 * 16384 tries (an app's UI stays live) and stops when `signal` fires. At most 2^(difficulty+6) tries:
 * failing that bound has probability e^-64, so it only stops a loop that could not end otherwise. */
export async function solve(challenge: Uint8Array, bound: string | Uint8Array, difficulty: number, signal?: AbortSignal): Promise<Uint8Array> {
  const prefix = concat(challenge, typeof bound === "string" ? utf8(bound) : bound);
  const input = new Uint8Array(prefix.length + 8);
  input.set(prefix);
  const view = new DataView(input.buffer, prefix.length, 8);
  const limit = 2 ** (difficulty + 6);
  for (let counter = 0; counter < limit; counter++) {
    view.setUint32(0, Math.floor(counter / 2 ** 32));
    view.setUint32(4, counter >>> 0);
    if (leadingZeroBits(sha256(input)) >= difficulty) return input.slice(prefix.length);
    if ((counter & 16383) === 16383) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (signal?.aborted) throw new AbortedError();
    }
  }
  throw new ProtocolError("no proof-of-work solution found");
}
