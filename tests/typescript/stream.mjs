// One chat through the SDK's library API (the built package clients/typescript, by the entry point
// its package.json names), printing every event with the milliseconds since the chat began, as one
// JSON line, so that tests/test_typescript_e2e.py can tell a stream from a buffered answer.
// Usage: node stream.mjs URL PIN_BASE64 [PROTOCOL] (1, the default, or 2; trust the dev certificate
// with NODE_EXTRA_CA_CERTS)
import { readFile } from "node:fs/promises";

const sdk = new URL("../../clients/typescript/", import.meta.url);
const { main } = JSON.parse(await readFile(new URL("package.json", sdk), "utf8"));
const { PrivllmClient } = await import(new URL(main, sdk).href);

const [url, pin, protocol = "1"] = process.argv.slice(2);
if (protocol !== "1" && protocol !== "2") throw new Error("PROTOCOL must be 1 or 2");
const client = new PrivllmClient({ url, pin, protocol: Number(protocol) });
const messages = [{ role: "user", content: "Name three colours of the rainbow and say one thing about each." }];
const start = performance.now();
const events = [];
for await (const event of client.chat(messages, { maxTokens: 64, temperature: 0 })) {
  events.push({ ...event, ms: performance.now() - start });
}
process.stdout.write(JSON.stringify(events) + "\n");
