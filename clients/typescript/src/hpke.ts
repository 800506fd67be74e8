/**
 * RFC 9180 HPKE, only what protocol v1 uses: mode_auth with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
 * ChaCha20-Poly1305, written on @noble primitives (pure JS: Hermes has no WebCrypto).
 * The recipient side (setupAuthR) is here for the conformance tests, which open the vectors' requests.
 */
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { x25519 } from "@noble/curves/ed25519.js";
import { expand, extract } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { concat } from "./encoding.js";

const MODE_AUTH = 0x02;
const ASCII = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const HPKE_V1 = ASCII("HPKE-v1");
const KEM_SUITE = concat(ASCII("KEM"), new Uint8Array([0x00, 0x20]));
const SUITE = concat(ASCII("HPKE"), new Uint8Array([0x00, 0x20, 0x00, 0x01, 0x00, 0x03]));
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
  ) {}

  private nextNonce(): Uint8Array {
    const nonce = this.baseNonce.slice();
    let s = this.seq++;
    for (let i = nonce.length - 1; s > 0; i--, s = Math.floor(s / 256)) nonce[i]! ^= s & 255;
    return nonce;
  }

  seal(aad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    return chacha20poly1305(this.key, this.nextNonce(), aad).encrypt(plaintext);
  }

  /** Throws on a bad tag. */
  open(aad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    const nonce = this.nextNonce();
    return chacha20poly1305(this.key, nonce, aad).decrypt(ciphertext);
  }

  export(context: Uint8Array, length: number): Uint8Array {
    return labeledExpand(SUITE, this.exporterSecret, "sec", context, length);
  }
}

function keySchedule(sharedSecret: Uint8Array, info: Uint8Array): Context {
  const pskIdHash = labeledExtract(SUITE, EMPTY, "psk_id_hash", EMPTY);
  const infoHash = labeledExtract(SUITE, EMPTY, "info_hash", info);
  const context = concat(new Uint8Array([MODE_AUTH]), pskIdHash, infoHash);
  const secret = labeledExtract(SUITE, sharedSecret, "secret", EMPTY);
  return new Context(
    labeledExpand(SUITE, secret, "key", context, 32),
    labeledExpand(SUITE, secret, "base_nonce", context, 12),
    labeledExpand(SUITE, secret, "exp", context, 32),
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

export function x25519Public(privateKey: Uint8Array): Uint8Array {
  return x25519.getPublicKey(privateKey);
}
