export { PrivllmClient, MemoryKeyStore } from "./client.js";
export type { ChatEvent, ChatOptions, ClientOptions, KeyStore } from "./client.js";
export type { Message, ReasoningEffort, Role, Verbosity } from "./request.js";
export type { TransportName, XhrConstructor, XhrLike } from "./transport.js";
export { AbortedError, NetworkError, PrivllmError, ProtocolError, RateLimitedError, ServerError, TruncatedError } from "./errors.js";
