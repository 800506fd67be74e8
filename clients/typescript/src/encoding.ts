/** Strict encodings: canonical base64, strict UTF-8, bounded JSON, RFC 8785 (JCS) for the key set. */
import { ProtocolError } from "./errors.js";

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_INDEX = new Int16Array(128).fill(-1);
for (let i = 0; i < B64.length; i++) B64_INDEX[B64.charCodeAt(i)] = i;

export function b64encode(data: Uint8Array): string {
  let out = "";
  for (let i = 0; i < data.length; i += 3) {
    const n = (data[i]! << 16) | ((data[i + 1] ?? 0) << 8) | (data[i + 2] ?? 0);
    out += B64[(n >> 18) & 63]! + B64[(n >> 12) & 63]!;
    out += i + 1 < data.length ? B64[(n >> 6) & 63]! : "=";
    out += i + 2 < data.length ? B64[n & 63]! : "=";
  }
  return out;
}

/** Standard base64 with padding, canonical only (a value has one spelling); `length` exact when given. */
export function b64decode(value: unknown, length?: number, maxLength?: number): Uint8Array {
  if (typeof value !== "string" || value.length % 4 !== 0) throw new ProtocolError("bad base64");
  if (maxLength !== undefined && value.length > 4 * Math.ceil(maxLength / 3)) throw new ProtocolError("bad base64");
  const pad = value.endsWith("==") ? 2 : value.endsWith("=") ? 1 : 0;
  const out = new Uint8Array((value.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < value.length; i += 4) {
    let n = 0;
    for (let j = 0; j < 4; j++) {
      const c = value.charCodeAt(i + j);
      const last = i + 4 === value.length;
      const v = c === 61 && last && j >= 4 - pad ? 0 : c < 128 ? B64_INDEX[c]! : -1;
      if (v < 0) throw new ProtocolError("bad base64");
      n = (n << 6) | v;
    }
    for (let k = 16; k >= 0 && o < out.length; k -= 8) out[o++] = (n >> k) & 255;
  }
  if (b64encode(out) !== value) throw new ProtocolError("non-canonical base64"); // non-zero pad bits
  if (length !== undefined && out.length !== length) throw new ProtocolError("wrong length");
  return out;
}

export function b64url(data: Uint8Array): string {
  return b64encode(data).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function hex(data: Uint8Array): string {
  let out = "";
  for (const b of data) out += b.toString(16).padStart(2, "0");
  return out;
}

export function unhex(text: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/.test(text)) throw new Error("bad hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const ENCODER: { encode(s: string): Uint8Array } | null = typeof TextEncoder === "function" ? new TextEncoder() : null;

/** UTF-8 of Unicode text (older Hermes lacks TextEncoder: then encoded here). */
export function utf8(text: string): Uint8Array {
  if (!isScalarText(text)) throw new ProtocolError("text holds a lone surrogate");
  return ENCODER !== null ? ENCODER.encode(text) : utf8Js(text);
}

/** The encoder for platforms without TextEncoder (exported for the tests). */
export function utf8Js(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 63));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
  }
  return Uint8Array.from(out);
}

let decoder: { decode(b: Uint8Array): string } | null | undefined;

/** A strict TextDecoder, made on first use; null where there is none or it cannot be strict (some React Native
 * polyfills throw on `fatal`): then the decoder below. */
function strictDecoder(): { decode(b: Uint8Array): string } | null {
  if (decoder === undefined) {
    try {
      decoder = typeof TextDecoder === "function" ? new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }) : null;
    } catch {
      decoder = null;
    }
  }
  return decoder;
}

/** Strict UTF-8 (no overlongs, surrogates or truncated sequences); Hermes may lack TextDecoder. */
export function fromUtf8(bytes: Uint8Array): string {
  const d = strictDecoder();
  if (d === null) return fromUtf8Js(bytes);
  try {
    return d.decode(bytes);
  } catch {
    throw new ProtocolError("not UTF-8");
  }
}

/** The decoder for platforms without TextDecoder (exported for the tests). */
export function fromUtf8Js(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i]!;
    const [len, min] = b < 0x80 ? [1, 0] : b >= 0xc2 && b < 0xe0 ? [2, 0x80] : b >= 0xe0 && b < 0xf0 ? [3, 0x800] : b >= 0xf0 && b < 0xf5 ? [4, 0x10000] : [0, 0];
    if (len === 0 || i + len > bytes.length) throw new ProtocolError("not UTF-8");
    let cp = len === 1 ? b : b & (0xff >> (len + 1));
    for (let k = 1; k < len; k++) {
      const c = bytes[i + k]!;
      if ((c & 0xc0) !== 0x80) throw new ProtocolError("not UTF-8");
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) throw new ProtocolError("not UTF-8");
    out += String.fromCodePoint(cp);
    i += len;
  }
  return out;
}

/** True when every code point is a Unicode scalar value (JSON escapes can spell lone surrogates). */
export function isScalarText(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    const next = text.charCodeAt(i + 1); // NaN past the end
    if (c > 0xdbff || !(next >= 0xdc00 && next <= 0xdfff)) return false;
    i++;
  }
  return true;
}

/** Nesting depth of JSON text, counted outside strings, before parsing it (so a deep value costs nothing). */
function depthWithin(text: string, maxDepth: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 || c === 91) {
      if (++depth > maxDepth) return false;
    } else if (c === 125 || c === 93) depth--;
  }
  return true;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** JSON from the router, bounded in size (UTF-16 units of the decoded text) and nesting. */
export function parseBounded(text: string, maxChars: number, maxDepth: number): Json {
  if (text.length > maxChars || !depthWithin(text, maxDepth)) throw new ProtocolError("malformed JSON");
  try {
    return JSON.parse(text) as Json;
  } catch {
    throw new ProtocolError("malformed JSON");
  }
}

export function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function hasExactly(obj: JsonObject, members: readonly string[]): boolean {
  const keys = Object.keys(obj);
  return keys.length === members.length && members.every((m) => Object.prototype.hasOwnProperty.call(obj, m));
}

/** RFC 8785 for what the key set holds (strings, safe integers, arrays, objects): sorted names, no whitespace.
 * JavaScript's default sort compares UTF-16 code units, as JCS does, and JSON.stringify escapes strings as JCS does. */
export function canonicalJson(value: Json): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new ProtocolError("only integers are signed");
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (isObject(value)) {
    const names = Object.keys(value).sort();
    return `{${names.map((n) => `${JSON.stringify(n)}:${canonicalJson(value[n]!)}`).join(",")}}`;
  }
  throw new ProtocolError("only strings, integers, arrays and objects are signed");
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Constant-time equality of two byte strings of public length. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
