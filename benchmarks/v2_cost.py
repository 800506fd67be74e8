"""
What protocol v2 (Oblivious HTTP) adds to a chat, against v1, direct and through a relay:

    python -m benchmarks.v2_cost [--chats 20] [--max-tokens 16] [--out v2-cost.json]

One real dev router (real llama-server, SmolLM2) and Debian's nginx in front of it as a relay
(privllm.test.relay; it also forwards v1's routes, as a plain reverse proxy, to tell the hop's
cost from the protocol's). Four paths, interleaved chat by chat so drift hits each alike:
v1 and v2 straight to the router, v1 and v2 through nginx. Each path keeps one kept-alive
HTTPS connection, as an app would, and its key set is fetched once before the runs.

Per chat: time to first token (from sealing the request to the first delta opened, so the
cost of sealing is in it) and the bytes of the request and answer bodies (HTTP headers left
out: the same for both protocols but for their content types). Sealing and opening use
privllm.protocol directly, the code both clients run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from privllm.keys.pki import CA_CERT, create_ca, issue
from privllm.protocol import response as v1_response
from privllm.protocol.ohttp.keyconfig import KeyConfig, parse_key_configs
from privllm.protocol.request import new_request_id, seal_request
from privllm.protocol.v2.request import seal_chat_request
from privllm.protocol.v2.response import ResponseReader
from privllm.test.relay import Relay
from privllm.test.stack import Daemon  # test equipment, shared with tests/

from .report import machine, percentile, write_report

PROMPT = "Who were the US presidents in the 1990s?"
RELAY_SOURCE = "127.0.0.5"


class Path:
    """One way to the router: a host port and TLS trust, one kept-alive connection."""

    def __init__(self, name: str, port: int, cafile: str) -> None:
        self.name, self.port = name, port
        self.context = ssl.create_default_context(cafile=cafile)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.context, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        self.conn.request(method, path, body=body, headers=headers or {})
        return self.conn.getresponse()


def v1_chat(path: Path, device: bytes, key: dict[str, Any], chat: dict[str, Any]) -> dict[str, float]:
    start = time.perf_counter()
    sealed = seal_request(
        key_id=key["key_id"],
        router_public_key=base64.b64decode(key["public_key"]),
        device_private_key=device,
        plaintext=chat,
        timestamp=int(time.time()),
        request_id=new_request_id(),
    )
    body = json.dumps(sealed.body).encode()
    reader = v1_response.ResponseReader(sealed)
    response = path.request("POST", "/api/chat", body, {"content-type": "application/json"})
    return _read(response, reader.feed, start, len(body))


def v2_chat(path: Path, device: bytes, config: KeyConfig, chat: dict[str, Any]) -> dict[str, float]:
    start = time.perf_counter()
    sealed = seal_chat_request(config, device, chat, int(time.time()))
    reader = ResponseReader(sealed.context)
    response = path.request("POST", "/api/ohttp", sealed.body, {"content-type": "message/ohttp-req"})
    result = _read(response, reader.feed, start, len(sealed.body))
    reader.end()
    return result


def _read(response: Any, feed: Callable[[bytes], list[dict[str, Any]]], start: float, sent: int) -> dict[str, float]:
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {response.read()[:200]!r}")
    received, first = 0, None
    while data := response.read1(65536):
        received += len(data)
        events = feed(data)  # every piece, always: the reader needs the whole stream
        if first is None and any(e["type"] == "delta" for e in events):
            first = time.perf_counter()
    if first is None:
        raise RuntimeError("no delta")
    return {"ttft_ms": (first - start) * 1000, "request_bytes": sent, "answer_bytes": received}


def keys_v1(path: Path) -> dict[str, Any]:
    response = path.request("GET", "/api/pubkey")
    doc = json.loads(response.read())
    return next(k for k in doc["keys"] if k["status"] == "current")


def keys_v2(path: Path) -> KeyConfig:
    return parse_key_configs(path.request("GET", "/api/ohttp-keys").read())[0]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p10": percentile(ordered, 0.1),
        "p90": percentile(ordered, 0.9),
        "min": ordered[0],
        "max": ordered[-1],
    }


def run(chats: int, max_tokens: int) -> dict[str, Any]:
    daemon = Daemon(
        {"ohttp": {"relays": [RELAY_SOURCE]}, "rate_limit": {"per_address_rate": 1000.0, "per_address_burst": 1000}},
        name="v2-cost",
    )
    pki = tempfile.mkdtemp(prefix="privllm-v2-cost-")
    relay = None
    try:
        daemon.start()
        create_ca(os.path.join(pki, "ca"))
        cert, key = issue(os.path.join(pki, "ca"), "relay", os.path.join(pki, "certs"), ips=["127.0.0.1"])
        routes = ("/api/ohttp", "/api/ohttp-keys", "/api/chat", "/api/pubkey")
        relay = Relay(daemon.port, daemon.ca_file, cert, key, RELAY_SOURCE, routes).start()
        relay_ca = os.path.join(pki, "ca", CA_CERT)
        paths = {
            "v1 direct": Path("v1 direct", daemon.port, daemon.ca_file),
            "v2 direct": Path("v2 direct", daemon.port, daemon.ca_file),
            "v1 via nginx": Path("v1 via nginx", relay.port, relay_ca),
            "v2 via relay": Path("v2 via relay", relay.port, relay_ca),
        }
        keys: dict[str, Any] = {
            name: (keys_v2(p) if name.startswith("v2") else keys_v1(p)) for name, p in paths.items()
        }
        device = os.urandom(32)
        chat = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0.0}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        names = list(paths)
        for i in range(chats + 1):  # the first round warms every path up and is dropped
            for name in names[i % len(names) :] + names[: i % len(names)]:
                one = v2_chat if name.startswith("v2") else v1_chat
                result = one(paths[name], device, keys[name], chat)
                if i:
                    samples[name].append(result)
        return {
            name: {
                "ttft_ms": summary([s["ttft_ms"] for s in got]),
                "request_bytes": summary([s["request_bytes"] for s in got]),
                "answer_bytes": summary([s["answer_bytes"] for s in got]),
                "chats": len(got),
            }
            for name, got in samples.items()
        }
    finally:
        if relay is not None:
            relay.cleanup()
        daemon.cleanup()
        shutil.rmtree(pki, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = run(args.chats, args.max_tokens)
    report = {"machine": machine(), "chats": args.chats, "max_tokens": args.max_tokens, "paths": results}
    for name, r in results.items():
        t, q, a = r["ttft_ms"], r["request_bytes"], r["answer_bytes"]
        print(
            f"{name:13} ttft median {t['median']:7.1f} ms (p10 {t['p10']:.1f}, p90 {t['p90']:.1f})"
            f"  request {q['median']:.0f} B  answer {a['median']:.0f} B (p10 {a['p10']:.0f}, p90 {a['p90']:.0f})"
        )
    if args.out:
        write_report(report, args.out)


if __name__ == "__main__":
    main()
