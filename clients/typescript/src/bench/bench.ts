/**
 * The SDK's cost per chat on Node: seal one request (with and without an encapsulation prepared
 * ahead), open one streamed chunk, verify the key set. Median over runs of many iterations each.
 *   npm run bench
 */
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { randomBytes } from "@noble/hashes/utils.js";
import { b64encode, concat, utf8 } from "../encoding.js";
import { x25519Public } from "../hpke.js";
import { encapsulate, sealRequest, chatPlaintext } from "../request.js";
import { chunkNonce, deriveStreamKeys, StreamOpener } from "../stream.js";
import { verifyKeySet } from "../keyset.js";
import { solve } from "../pow.js";
import { readFileSync } from "node:fs";

const RUNS = 7;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Microseconds per call: the median of RUNS runs of `iterations` calls (after one warm-up run). */
function measure(name: string, iterations: number, fn: (i: number) => void): void {
  const perRun: number[] = [];
  for (let run = -1; run < RUNS; run++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn(i);
    const us = Number(process.hrtime.bigint() - start) / 1000 / iterations;
    if (run >= 0) perRun.push(us);
  }
  const fmt = (x: number): string => x.toFixed(1);
  console.log(`${name.padEnd(44)} ${fmt(median(perRun)).padStart(8)} µs/op  (runs: ${fmt(Math.min(...perRun))}..${fmt(Math.max(...perRun))}, ${iterations} ops each)`);
}

const routerPublic = x25519Public(randomBytes(32));
const device = randomBytes(32);
const plaintext = chatPlaintext([{ role: "user", content: "Who were the US presidents in the 1990s? ".repeat(4) }], { maxTokens: 300 });

measure("seal a request (encapsulate + seal)", 200, () => {
  sealRequest(encapsulate(routerPublic, device, randomBytes(32)), 7, plaintext, 1767229230, "BenchRequestId_0123456789abcdef");
});
const prepared = Array.from({ length: 200 }, () => encapsulate(routerPublic, device, randomBytes(32)));
measure("seal with a prepared encapsulation", 200, (i) => {
  sealRequest(prepared[i]!, 7, plaintext, 1767229230, "BenchRequestId_0123456789abcdef");
});

// A delta as the router sends it: compact JSON padded to 64 bytes, base64 in an SSE event.
const keys = deriveStreamKeys(randomBytes(32), randomBytes(32), randomBytes(32));
const delta = utf8('{"type":"delta","text":" Clinton"}');
const padded = concat(delta, new Uint8Array(64 - delta.length));
const CHUNKS = 2000;
const sealed = Array.from({ length: CHUNKS }, (_, i) => b64encode(chacha20poly1305(keys.key, chunkNonce(keys.nonce, i), new Uint8Array(0)).encrypt(padded)));
let opener = new StreamOpener(keys);
measure("open one chunk (64-byte padded delta)", CHUNKS, (i) => {
  if (i === 0) opener = new StreamOpener(keys);
  opener.open(sealed[i]!);
});
measure("derive the stream keys (per answer)", 2000, () => {
  deriveStreamKeys(keys.key, routerPublic, device);
});

const vectors = JSON.parse(readFileSync(new URL("../../../../docs/vectors/protocol-v1.json", import.meta.url), "utf8"));
const keySetText = JSON.stringify(vectors.keyset.document);
const pin = Uint8Array.from(Buffer.from(vectors.keyset.pin_hex, "hex"));
measure("verify the key set (Ed25519 + JCS)", 200, () => {
  verifyKeySet(keySetText, pin, vectors.keyset.issued_at);
});

// Proof of work: the vectors' challenge needs 102,111 tries (counter 0x18ede) at 16 bits.
const challenge = Uint8Array.from(Buffer.from(vectors.pow.challenge_hex, "hex"));
const tries = Number(BigInt(`0x${vectors.pow.nonce_hex}`)) + 1;
const rates: number[] = [];
for (let run = 0; run < 3; run++) {
  const start = process.hrtime.bigint();
  await solve(challenge, vectors.pow.request_id, vectors.pow.difficulty);
  rates.push(tries / (Number(process.hrtime.bigint() - start) / 1e9));
}
console.log(`${"proof of work (SHA-256 tries per second)".padEnd(44)} ${Math.round(median(rates)).toLocaleString("en").padStart(8)} /s    (24 bits: ${(2 ** 24 / median(rates)).toFixed(0)} s on average)`);
