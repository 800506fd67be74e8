/**
 * RFC 9180 HPKE, only what privllm uses, written on @noble primitives (pure JS: Hermes has no WebCrypto):
 * DHKEM(X25519, HKDF-SHA256) and HKDF-SHA256; protocol v1 uses mode_auth with ChaCha20-Poly1305, protocol v2
 * (Oblivious HTTP) mode_base with ChaCha20-Poly1305 or AES-128-GCM.
 * The recipient sides (setupAuthR, setupBaseR) are here for the tests, which open the requests they seal.
 */
import { gcm } from "@noble/ciphers/aes.js";
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { x25519 } from "@noble/curves/ed25519.js";
import { expand, extract } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { concat } from "./encoding.js";

const MODE_BASE = 0x00;
const MODE_AUTH = 0x02;
export const AEAD_AES_128_GCM = 0x0001;
export const AEAD_AES_256_GCM = 0x0002;
export const AEAD_CHACHA20_POLY1305 = 0x0003;
/** Nk of the AEADs allowed (RFC 9180's three, as the router's allow-list); Nn is 12 for all. */
export const AEAD_KEY_SIZE: Readonly<Record<number, number>> = { [AEAD_AES_128_GCM]: 16, [AEAD_AES_256_GCM]: 32, [AEAD_CHACHA20_POLY1305]: 32 };

export type Aead = (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array) => { encrypt(p: Uint8Array): Uint8Array; decrypt(c: Uint8Array): Uint8Array };

/** The AEAD for an allowed id; a TypeError for any other (callers check ids against the allow-list first). */
export function aeadFor(aeadId: number): Aead {
  if (aeadId === AEAD_CHACHA20_POLY1305) return chacha20poly1305;
  if (aeadId === AEAD_AES_128_GCM || aeadId === AEAD_AES_256_GCM) return gcm;
  throw new TypeError("AEAD outside the allow-list");
}
const ASCII = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const HPKE_V1 = ASCII("HPKE-v1");
const KEM_SUITE = concat(ASCII("KEM"), new Uint8Array([0x00, 0x20]));
const suiteId = (aeadId: number): Uint8Array => concat(ASCII("HPKE"), new Uint8Array([0x00, 0x20, 0x00, 0x01, 0x00, aeadId]));
const SUITE = suiteId(AEAD_CHACHA20_POLY1305);
const EMPTY = new Uint8Array(0);

function labeledExtract(suite: Uint8Array, salt: Uint8Array, label: string, ikm: Uint8Array): Uint8Array {
  return extract(sha256, concat(HPKE_V1, suite, ASCII(label), ikm), salt);
}

function labeledExpand(suite: Uint8Array, prk: Uint8Array, label: string, info: Uint8Array, length: number): Uint8Array {
  const info2 = concat(new Uint8Array([length >> 8, length & 255]), HPKE_V1, suite, ASCII(label), info);
  return expand(sha256, prk, info2, length);
}

function kemSharedSecret(dh: Uint8Array, kemContext: Uint8Array): Uint8Array {
  const prk = labeledExtract(KEM_SUITE, EMPTY, "eae_prk", dh);
  return labeledExpand(KEM_SUITE, prk, "shared_secret", kemContext, 32);
}

/** An HPKE context: seal/open advance one sequence number; export derives secrets. */
export class Context {
  private seq = 0;
  constructor(
    private readonly key: Uint8Array,
    private readonly baseNonce: Uint8Array,
    private readonly exporterSecret: Uint8Array,
    private readonly aead: Aead = chacha20poly1305,
    private readonly suite: Uint8Array = SUITE,
  ) {}

  private nextNonce(): Uint8Array {
    const nonce = this.baseNonce.slice();
    let s = this.seq++;
    for (let i = nonce.length - 1; s > 0; i--, s = Math.floor(s / 256)) nonce[i]! ^= s & 255;
    return nonce;
  }

  seal(aad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    return this.aead(this.key, this.nextNonce(), aad).encrypt(plaintext);
  }

  /** Throws on a bad tag. */
  open(aad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    const nonce = this.nextNonce();
    return this.aead(this.key, nonce, aad).decrypt(ciphertext);
  }

  export(context: Uint8Array, length: number): Uint8Array {
    return labeledExpand(this.suite, this.exporterSecret, "sec", context, length);
  }
}

function keySchedule(sharedSecret: Uint8Array, info: Uint8Array, mode = MODE_AUTH, aeadId = AEAD_CHACHA20_POLY1305): Context {
  const suite = suiteId(aeadId);
  const pskIdHash = labeledExtract(suite, EMPTY, "psk_id_hash", EMPTY);
  const infoHash = labeledExtract(suite, EMPTY, "info_hash", info);
  const context = concat(new Uint8Array([mode]), pskIdHash, infoHash);
  const secret = labeledExtract(suite, sharedSecret, "secret", EMPTY);
  return new Context(
    labeledExpand(suite, secret, "key", context, AEAD_KEY_SIZE[aeadId]!),
    labeledExpand(suite, secret, "base_nonce", context, 12),
    labeledExpand(suite, secret, "exp", context, 32),
    aeadFor(aeadId),
    suite,
  );
}

export interface SenderSetup {
  enc: Uint8Array;
  sharedSecret: Uint8Array;
  context: Context;
}

/** SetupAuthS: `ephemeral` is the ephemeral private key (fresh random bytes; fixed only in the vectors). */
export function setupAuthS(pkR: Uint8Array, skS: Uint8Array, info: Uint8Array, ephemeral: Uint8Array, pkS: Uint8Array = x25519.getPublicKey(skS)): SenderSetup {
  const enc = x25519.getPublicKey(ephemeral);
  // noble refuses a low-order pkR (an all-zero shared secret), as RFC 9180 requires.
  const dh = concat(x25519.getSharedSecret(ephemeral, pkR), x25519.getSharedSecret(skS, pkR));
  const sharedSecret = kemSharedSecret(dh, concat(enc, pkR, pkS));
  return { enc, sharedSecret, context: keySchedule(sharedSecret, info) };
}

/** SetupAuthR: the router's side, used by the tests to check sealed requests. */
export function setupAuthR(enc: Uint8Array, skR: Uint8Array, pkS: Uint8Array, info: Uint8Array): Context {
  const dh = concat(x25519.getSharedSecret(skR, enc), x25519.getSharedSecret(skR, pkS));
  return keySchedule(kemSharedSecret(dh, concat(enc, x25519.getPublicKey(skR), pkS)), info);
}

/** SetupBaseS (Oblivious HTTP): `ephemeral` as for setupAuthS; `aeadId` from the allow-list. */
export function setupBaseS(pkR: Uint8Array, info: Uint8Array, ephemeral: Uint8Array, aeadId: number): SenderSetup {
  const enc = x25519.getPublicKey(ephemeral);
  // noble refuses a low-order pkR (an all-zero shared secret), as RFC 9180 requires.
  const sharedSecret = kemSharedSecret(x25519.getSharedSecret(ephemeral, pkR), concat(enc, pkR));
  return { enc, sharedSecret, context: keySchedule(sharedSecret, info, MODE_BASE, aeadId) };
}

/** SetupBaseR: the gateway's side, used by the tests to open sealed requests. */
export function setupBaseR(enc: Uint8Array, skR: Uint8Array, info: Uint8Array, aeadId: number): Context {
  const shared = kemSharedSecret(x25519.getSharedSecret(skR, enc), concat(enc, x25519.getPublicKey(skR)));
  return keySchedule(shared, info, MODE_BASE, aeadId);
}

export function x25519Public(privateKey: Uint8Array): Uint8Array {
  return x25519.getPublicKey(privateKey);
}
