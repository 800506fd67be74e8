/** Every failure of a chat is one of these: an app can tell the user what happened and whether to retry. */
export class PrivllmError extends Error {
  override name = "PrivllmError"; // spelled out: minifiers rename classes
}

/** The router could not be reached, or the connection broke before an answer began. */
export class NetworkError extends PrivllmError {
  override name = "NetworkError";
}

/** The answer broke the protocol: wrong pin, bad signature, tampered or malformed chunk. Treat as an attack. */
export class ProtocolError extends PrivllmError {
  override name = "ProtocolError";
}

/** The stream ended without its sealed final chunk: the answer is incomplete. */
export class TruncatedError extends ProtocolError {
  override name = "TruncatedError";
}

/** Rate limited (plaintext 429 or a sealed `rate_limited` chunk): wait `retryAfter` seconds, if known. */
export class RateLimitedError extends PrivllmError {
  override name = "RateLimitedError";
  readonly retryAfter: number | null;
  readonly status: number | null;
  constructor(retryAfter: number | null, status: number | null) {
    super(`rate limited${retryAfter !== null ? `, retry after ${retryAfter} s` : ""}`);
    this.retryAfter = retryAfter;
    this.status = status;
  }
}

/** The router refused the request (plaintext error, `status` set) or ended the stream with a sealed error (`status` null). */
export class ServerError extends PrivllmError {
  override name = "ServerError";
  readonly code: string;
  readonly status: number | null;
  readonly retryAfter: number | null;
  constructor(code: string, status: number | null, retryAfter: number | null = null, message?: string) {
    super(message ?? `server error ${code}${status !== null ? ` (HTTP ${status})` : ""}`);
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** The caller's AbortSignal fired. */
export class AbortedError extends PrivllmError {
  override name = "AbortedError";
  constructor() {
    super("aborted");
  }
}
