/** Server-Sent Events, incremental: bytes in (split anywhere), complete events out; lines bounded. */
import { concat, fromUtf8 } from "./encoding.js";
import { ProtocolError } from "./errors.js";

export interface SseEvent {
  event: string;
  data: string;
}

const LF = 0x0a;
const CR = 0x0d;

export class SseParser {
  private pending: Uint8Array[] = [];
  private pendingSize = 0;
  private skipLf = false; // a CR ended the previous line; an LF right after it belongs to it
  private event = "";
  private data: string[] = [];
  private size = 0;

  constructor(
    private readonly maxLine = 1 << 20,
    private readonly maxEvent = 1 << 20,
  ) {}

  /** Only the new bytes are scanned: a line dribbled in byte by byte costs linear time. */
  feed(bytes: Uint8Array): SseEvent[] {
    const events: SseEvent[] = [];
    let start = 0;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i]!;
      if (b !== LF && b !== CR) continue;
      if (this.skipLf && b === LF && i === start && this.pendingSize === 0) {
        this.skipLf = false;
        start = i + 1;
        continue;
      }
      const event = this.line(this.take(bytes.subarray(start, i)));
      if (event !== null) events.push(event);
      this.skipLf = b === CR;
      start = i + 1;
    }
    if (start < bytes.length) {
      this.skipLf = false;
      this.pending.push(bytes.slice(start));
      this.pendingSize += bytes.length - start;
      if (this.pendingSize > this.maxLine) throw new ProtocolError("SSE line too long");
    }
    return events;
  }

  /** The body ended: a partial line or an event without its blank line is refused, not dropped. */
  end(): void {
    if (this.pendingSize > 0 || this.event !== "" || this.data.length > 0) throw new ProtocolError("the stream ended inside an event");
  }

  private take(tail: Uint8Array): Uint8Array {
    if (this.pendingSize === 0) return tail;
    const line = concat(...this.pending, tail);
    this.pending = [];
    this.pendingSize = 0;
    return line;
  }

  private line(raw: Uint8Array): SseEvent | null {
    if (raw.length > this.maxLine) throw new ProtocolError("SSE line too long");
    if (raw.length === 0) return this.dispatch();
    const line = fromUtf8(raw);
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") {
      this.size += value.length + 1;
      if (this.size > this.maxEvent) throw new ProtocolError("SSE event too large");
      this.data.push(value);
    } // id, retry and unknown fields carry nothing this protocol uses
    return null;
  }

  private dispatch(): SseEvent | null {
    const event = { event: this.event || "message", data: this.data.join("\n") };
    const had = this.data.length > 0;
    this.event = "";
    this.data = [];
    this.size = 0;
    return had ? event : null;
  }
}
