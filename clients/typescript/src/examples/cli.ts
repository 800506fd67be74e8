#!/usr/bin/env node
/**
 * The TypeScript twin of `privllm-chat`: one end-to-end encrypted question, the answer printed as it streams.
 *   node dist/examples/cli.js --url https://127.0.0.1:8443 --pin <base64> [--max-tokens N] "question"
 * Node trusts a self-signed dev router through NODE_EXTRA_CA_CERTS=<state_dir>/tls.crt.
 * Exit codes as privllm-chat: 2 usage, 3 network, 4 protocol, 5 truncated, 6 server refusal, 130 interrupted.
 */
import { chmodSync, mkdirSync, openSync, readFileSync, renameSync, writeSync, closeSync, fsyncSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { AbortedError, NetworkError, PrivllmClient, PrivllmError, ProtocolError, TruncatedError } from "../index.js";
import type { KeyStore, ReasoningEffort, Verbosity } from "../index.js";

const USAGE = `usage: cli.js [--url URL] [--pin BASE64 | --state-dir DIR] [--device-key FILE] [--system TEXT]
              [--max-tokens N] [--temperature T] [--verbosity brief|normal|detailed]
              [--reasoning-effort low|medium|high] [--max-pow-bits N] [--protocol 1|2] [--json] "question"`;

/** The device key in a 0600 file (the same raw 32 bytes privllm-chat keeps), written atomically. */
class FileKeyStore implements KeyStore {
  constructor(private readonly path: string) {}
  async get(): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(readFileSync(this.path));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw e;
    }
  }
  async set(key: Uint8Array): Promise<void> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.tmp.${process.pid}`;
    const fd = openSync(tmp, "wx", 0o600);
    try {
      writeSync(fd, key);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    chmodSync(tmp, 0o600);
    renameSync(tmp, this.path);
  }
}

function exitCode(error: unknown): number {
  if (error instanceof AbortedError) return 130;
  if (error instanceof NetworkError) return 3;
  if (error instanceof TruncatedError) return 5;
  if (error instanceof ProtocolError) return 4;
  if (error instanceof PrivllmError) return 6; // ServerError, RateLimitedError
  return 1;
}

function fail(message: string): never {
  process.stderr.write(`privllm-chat: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function integer(text: string | undefined, name: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^[0-9]+$/.test(text)) fail(`--${name} must be a positive integer`);
  return Number(text);
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        url: { type: "string", default: "https://127.0.0.1:8443" },
        pin: { type: "string" },
        "state-dir": { type: "string", default: join(process.env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "privllm") },
        "device-key": { type: "string", default: join(process.env.XDG_CONFIG_HOME || join(homedir(), ".config"), "privllm", "device.key") },
        system: { type: "string" },
        "max-tokens": { type: "string" },
        temperature: { type: "string" },
        verbosity: { type: "string" },
        "reasoning-effort": { type: "string" },
        "max-pow-bits": { type: "string" },
        protocol: { type: "string", default: "1" },
        json: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    fail((e as Error).message);
  }
  const { values: args, positionals } = parsed;
  if (positionals.length !== 1) fail("one question, please");
  if (args.protocol !== "1" && args.protocol !== "2") fail("--protocol must be 1 or 2");
  const protocol = args.protocol === "2" ? 2 : 1;
  let client: PrivllmClient;
  try {
    const pin = args.pin ?? readFileSync(join(args["state-dir"], "identity.pub"), "utf8").trim();
    client = new PrivllmClient({ url: args.url, pin, storage: new FileKeyStore(args["device-key"]), powCeiling: integer(args["max-pow-bits"], "max-pow-bits"), protocol });
  } catch (e) {
    fail((e as Error).message);
  }
  const messages = [...(args.system ? [{ role: "system" as const, content: args.system }] : []), { role: "user" as const, content: positionals[0]! }];
  const controller = new AbortController();
  process.once("SIGINT", () => controller.abort());
  try {
    const chat = client.chat(messages, {
      maxTokens: integer(args["max-tokens"], "max-tokens"),
      temperature: args.temperature === undefined ? undefined : Number(args.temperature),
      verbosity: args.verbosity as Verbosity | undefined,
      reasoningEffort: args["reasoning-effort"] as ReasoningEffort | undefined,
      signal: controller.signal,
    });
    for await (const event of chat) {
      if (args.json) process.stdout.write(`${JSON.stringify(event)}\n`);
      else if (event.type === "delta") process.stdout.write(event.text);
    }
  } catch (e) {
    if (!args.json) process.stdout.write("\n");
    if (e instanceof TypeError) fail(e.message);
    process.stderr.write(`privllm-chat: ${e instanceof Error ? e.message : String(e)}\n`);
    return exitCode(e);
  }
  if (!args.json) process.stdout.write("\n");
  return 0;
}

main().then((code) => process.exit(code));
