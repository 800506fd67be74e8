/**
 * Binary HTTP (RFC 9292) for the client, as privllm/protocol/ohttp/bhttp.py and bhttp_stream.py: the known-length
 * request it sends, and the indeterminate-length response (framing indicator 3) it reads as it streams, strictly
 * and within explicit limits. Truncation (section 3.8) is accepted only where what is left out is wholly empty.
 */
import { concat, utf8 } from "./encoding.js";
import { ProtocolError, TruncatedError } from "./errors.js";
import { encodeVarint, peekVarint } from "./ohttp.js";

export type Field = [name: string, value: Uint8Array];

const KNOWN_REQUEST = 0;
const KNOWN_RESPONSE = 1;
const INDETERMINATE_RESPONSE = 3;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/; // HTTP/2 field names: lowercase tokens

function bytes(value: Uint8Array): Uint8Array {
  return concat(encodeVarint(value.length), value);
}

/** Names are lowercase tokens; values carry no NUL, CR or LF and no outer whitespace. */
function checkField(name: string, value: Uint8Array): void {
  if (!TOKEN.test(name)) throw new ProtocolError("field name");
  const edge = (b: number | undefined): boolean => b === 0x20 || b === 0x09;
  if (value.some((b) => b === 0 || b === 0x0a || b === 0x0d) || edge(value[0]) || edge(value[value.length - 1])) {
    throw new ProtocolError("field value");
  }
}

/** A known-length request with no trailers; the empty trailer section left out (section 3.8), as RFC 9458's
 * example and the Python encoder do. */
export function encodeRequest(method: string, scheme: string, authority: string, path: string, headers: Field[], content: Uint8Array): Uint8Array {
  for (const [name, value] of headers) checkField(name, value);
  const section = bytes(concat(...headers.flatMap(([n, v]) => [bytes(utf8(n)), bytes(v)])));
  const parts = [section, bytes(content)];
  while (parts.length > 0 && parts[parts.length - 1]!.length === 1 && parts[parts.length - 1]![0] === 0) parts.pop();
  return concat(encodeVarint(KNOWN_REQUEST), ...[method, scheme, authority, path].map((s) => bytes(utf8(s))), ...parts);
}

export interface StreamLimits {
  maxFields: number;
  maxSection: number;
  maxChunk: number;
}

export type Part = { kind: "head"; status: number; headers: Field[] } | { kind: "content"; data: Uint8Array } | { kind: "end"; trailers: Field[] };

type State = "framing" | "status" | "fields" | "content" | "chunk" | "padding";

/** Fed any split of a streamed response, yields its head, content bytes as they arrive, and its end. Informational
 * (1xx) responses are refused: privllm's router sends none. Any error closes it. */
export class ResponseDecoder {
  private buffer: Uint8Array = new Uint8Array(0);
  private state: State = "framing";
  private section: "headers" | "trailers" = "headers";
  private status = 0;
  private fields: Field[] = [];
  private sectionUsed = 0;
  private chunkLeft = 0;
  private chunks = 0;
  private closed = false;
  finished = false;

  constructor(private readonly limits: StreamLimits) {}

  feed(data: Uint8Array): Part[] {
    if (this.closed) throw new ProtocolError("bytes after the response ended or failed");
    try {
      this.buffer = this.buffer.length === 0 ? data : concat(this.buffer, data);
      return this.advance();
    } catch (e) {
      this.closed = true;
      throw e;
    }
  }

  /** The input ended: the End a permitted truncation leaves implied, else TruncatedError. */
  end(): Part[] {
    if (this.closed) throw new ProtocolError("the response already ended or failed");
    this.closed = true;
    if (this.finished) return [];
    const empty = this.buffer.length === 0;
    const noContent = this.state === "content" && this.chunks === 0;
    const noTrailers = this.state === "fields" && this.section === "trailers" && this.sectionUsed === 0;
    if (!(empty && (noContent || noTrailers))) throw new TruncatedError("the response ended early");
    this.finished = true;
    return [{ kind: "end", trailers: [] }];
  }

  private advance(): Part[] {
    const parts: Part[] = [];
    while (this.buffer.length > 0) {
      if (this.state === "padding") {
        if (this.buffer.some((b) => b !== 0)) throw new ProtocolError("non-zero padding");
        this.buffer = new Uint8Array(0);
      } else if (this.state === "chunk") {
        const data = this.buffer.subarray(0, this.chunkLeft);
        this.buffer = this.buffer.subarray(data.length);
        this.chunkLeft -= data.length;
        if (this.chunkLeft === 0) this.state = "content";
        parts.push({ kind: "content", data });
      } else if (this.state === "fields") {
        const part = this.fieldLine();
        if (part === false) break;
        if (part !== true) parts.push(part);
      } else if (!this.number()) break;
    }
    return parts;
  }

  private number(): boolean {
    const peeked = peekVarint(this.buffer, 0);
    if (peeked === null) return false;
    const [value, size] = peeked;
    this.buffer = this.buffer.subarray(size);
    if (this.state === "framing") {
      if (value === KNOWN_RESPONSE) throw new ProtocolError("known-length Binary HTTP in a stream");
      if (value !== INDETERMINATE_RESPONSE) throw new ProtocolError("framing indicator");
      this.state = "status";
    } else if (this.state === "status") {
      if (value < 200 || value > 599) throw new ProtocolError("status");
      this.status = value;
      this.startSection("headers");
    } else if (value === 0) {
      this.startSection("trailers");
    } else if (value > this.limits.maxChunk) {
      throw new ProtocolError("content chunk too large");
    } else {
      this.state = "chunk";
      this.chunkLeft = value;
      this.chunks++;
    }
    return true;
  }

  private startSection(section: "headers" | "trailers"): void {
    this.state = "fields";
    this.section = section;
    this.fields = [];
    this.sectionUsed = 0;
  }

  /** True for a field line read, the section's part at its end, false while the line is incomplete. Lengths
   * beyond the section's room are refused before their bytes arrive. */
  private fieldLine(): Part | boolean {
    const room = this.limits.maxSection - this.sectionUsed;
    const name = peekVarint(this.buffer, 0);
    if (name === null) return false;
    const [nameLength, at] = name;
    if (nameLength === 0) {
      this.buffer = this.buffer.subarray(at);
      return this.sectionEnd();
    }
    if (this.fields.length === this.limits.maxFields) throw new ProtocolError("too many fields");
    if (at + nameLength > room) throw new ProtocolError("field section too large");
    const value = peekVarint(this.buffer, at + nameLength);
    if (value === null) return false;
    const [valueLength, valueSize] = value;
    const valueStart = at + nameLength + valueSize;
    if (valueStart + valueLength > room) throw new ProtocolError("field section too large");
    if (this.buffer.length < valueStart + valueLength) return false;
    const nameBytes = this.buffer.subarray(at, at + nameLength);
    const fieldName = String.fromCharCode(...nameBytes);
    const fieldValue = this.buffer.slice(valueStart, valueStart + valueLength);
    checkField(fieldName, fieldValue);
    this.fields.push([fieldName, fieldValue]);
    this.buffer = this.buffer.subarray(valueStart + valueLength);
    this.sectionUsed += valueStart + valueLength;
    return true;
  }

  private sectionEnd(): Part {
    if (this.section === "headers") {
      this.state = "content";
      this.chunks = 0;
      return { kind: "head", status: this.status, headers: this.fields };
    }
    this.state = "padding";
    this.finished = true;
    return { kind: "end", trailers: this.fields };
  }
}
