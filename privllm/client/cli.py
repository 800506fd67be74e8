"""`privllm-chat "question"`: an end-to-end encrypted chat from the terminal, printed as it streams.

Exit status: 0 answered, 2 usage (bad arguments or local files), 3 network, 4 protocol failure
(bad keys or signature, tampered or malformed answer), 5 truncated answer, 6 the router refused
or ended with an error. The same for both protocol versions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react

from ..config.profiles import default_state_dir
from ..keys.files import KeyFileError, ensure_private_dir, read_secret, write_secret
from ..keys.material import IDENTITY_PUB, TLS_CERT, new_hpke_keypair
from ..protocol.encoding import b64decode
from ..protocol.suite import POW_MAX_DIFFICULTY
from .api import PROTOCOLS, ClientError, PrivllmClient, router_url

__all__ = [
    "EXIT_USAGE",
    "default_device_key",
    "load_or_create_device_key",
    "main",
    "parse_args",
    "plaintext_from",
    "run",
]

EXIT_USAGE = 2


def default_device_key() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "privllm", "device.key")


def load_or_create_device_key(path: str) -> bytes:
    """The device's static X25519 key: it is the HPKE sender key, so it authenticates every request."""
    ensure_private_dir(os.path.dirname(path))
    if not os.path.lexists(path):
        write_secret(path, new_hpke_keypair()[0])
    key = read_secret(path)
    if len(key) != 32:
        raise KeyFileError(f"device key {path} is not 32 bytes")
    return key


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="privllm-chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("prompt", help="the question to ask")
    p.add_argument("--url", type=_url, default="https://127.0.0.1:8443", help="the router (default: the dev stack)")
    p.add_argument("--pin", help="the router's identity key (base64 Ed25519); dev: read from --state-dir")
    p.add_argument("--state-dir", default=default_state_dir(), help="the dev router's state directory")
    p.add_argument("--ca", help="PEM certificate to trust for TLS (dev: the router's own certificate)")
    p.add_argument(
        "--device-key", default=default_device_key(), help="this device's key file (0600, created if missing)"
    )
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--json", action="store_true", help="print every decrypted event as a JSON line")
    p.add_argument(
        "--max-pow-bits",
        type=_pow_bits,
        default=POW_MAX_DIFFICULTY,
        help=f"the most proof of work to do when the router asks (1..{POW_MAX_DIFFICULTY} bits; default the protocol's ceiling)",
    )
    p.add_argument(
        "--protocol",
        type=int,
        choices=PROTOCOLS,
        default=1,
        help="1: the signed key set and /api/chat; 2: Oblivious HTTP, the signed key configurations"
        " (/api/ohttp-keys) and /api/ohttp (default 1)",
    )
    return p.parse_args(argv)


def _url(text: str) -> str:
    try:
        return router_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _pow_bits(text: str) -> int:
    try:
        bits = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError("not an integer") from e
    if not 1 <= bits <= POW_MAX_DIFFICULTY:
        raise argparse.ArgumentTypeError(f"must be between 1 and {POW_MAX_DIFFICULTY}")
    return bits


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pin_and_root(args: argparse.Namespace) -> tuple[bytes, bytes | None]:
    pin_text = args.pin
    if pin_text is None:
        pin_text = _read(os.path.join(args.state_dir, IDENTITY_PUB)).decode().strip()
    root = _read(args.ca) if args.ca else None
    if root is None and args.pin is None:
        root = _read(os.path.join(args.state_dir, TLS_CERT))
    return b64decode(pin_text, 32), root


def plaintext_from(args: argparse.Namespace) -> dict[str, Any]:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    body: dict[str, Any] = {"messages": messages}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    return body


async def run(reactor: IReactorTime, args: argparse.Namespace) -> int:
    def pow_progress(difficulty: int, tries: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rthe router is busy: proof of work ({difficulty} bits), {tries:,} tries")
            sys.stderr.flush()

    try:
        pin, root = _pin_and_root(args)
        device = load_or_create_device_key(args.device_key)
        client = PrivllmClient(
            reactor,
            args.url,
            pin,
            device,
            root,
            on_pow=pow_progress,
            max_pow_difficulty=args.max_pow_bits,
            protocol=args.protocol,
        )
    except (OSError, ValueError, KeyFileError) as e:  # ValueError: EncodingError, undecodable or not PEM
        print(f"privllm-chat: {e}", file=sys.stderr)
        return EXIT_USAGE

    def show(chunk: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(chunk, ensure_ascii=False), flush=True)
        elif chunk["type"] == "delta":
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()

    try:
        await client.chat(plaintext_from(args), show)
    except ClientError as e:
        if not args.json:
            print()
        print(f"privllm-chat: {e}", file=sys.stderr)
        return e.exit_code
    if not args.json:
        print()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def _main(reactor: IReactorTime) -> Deferred[None]:
        d = ensureDeferred(run(reactor, args))

        def finish(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(finish)

    react(_main)
