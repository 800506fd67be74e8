"""
`privllm-admin`: what an operator needs to see and do with the router's keys.

  privllm-admin show       identity fingerprint (what the app pins), TLS SPKI pin, live HPKE keys
  privllm-admin rotate     start a new HPKE key now (--revoke drops every older key at once)
  privllm-admin ca-init    create a deployment CA in --dir (for mutual TLS router <-> nodes)
  privllm-admin ca-issue   issue --name's certificate and key from the CA in --dir into --out
  privllm-admin pin        print the SPKI pin of --cert (for backend.pins)
  privllm-admin backup     write the identity key, TLS certificate and key, and where the HPKE key ids
                           stand to --archive (0600)
  privllm-admin restore    put them back from --archive where the configuration says; the new key
                           ring starts past the old ids

show, rotate, backup and restore read the same configuration as the daemon (--env, --config,
PRIVLLM_*). What is backed up, and why nothing else is: docs/deployment.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import sys
import time

from .config import Config, ConfigError, load_config
from .keys.backup import backup, restore
from .keys.files import KeyFileError
from .keys.material import IDENTITY_KEY, TLS_CERT, load_identity
from .keys.pki import create_ca, issue
from .keys.service import KeyRingService
from .keys.store import KeyRingStore
from .keys.tls import load_chain, spki_pin
from .protocol import suite
from .protocol.keyring import KeyRing
from .protocol.keyset import KEYSET_CLOCK_SKEW

__all__ = ["describe", "entry_point", "main"]


def _when(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _paths(config: Config) -> tuple[str, str]:
    state = config.keys.state_dir
    return config.keys.identity_key or f"{state}/{IDENTITY_KEY}", config.server.certificate or f"{state}/{TLS_CERT}"


def describe(config: Config, ring: KeyRing, now: int) -> list[str]:
    identity_path, cert_path = _paths(config)
    identity = load_identity(identity_path).public_key().public_bytes_raw()
    published = {k.key_id: k.status for k in ring.published(now)}
    lines = [
        f"identity key (pin this in the app): {base64.b64encode(identity).decode()}",
        f"identity key SHA-256: {hashlib.sha256(identity).hexdigest()}",
        f"TLS certificate SPKI SHA-256 pin: {spki_pin(load_chain(cert_path)[0])}",
        "HPKE keys:",
    ]
    for k in ring.keys:
        status = published.get(k.key_id, "previous" if k.not_before <= now else "pending")
        lines.append(f"  key_id {k.key_id:3d}  {status:8s}  {_when(k.not_before)} .. {_when(k.not_after)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="privllm-admin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["show", "rotate", "ca-init", "ca-issue", "pin", "backup", "restore"])
    p.add_argument("--cert", help="pin: a PEM certificate")
    p.add_argument("--env", default="dev", choices=["dev", "prod"])
    p.add_argument("--config", help="the daemon's TOML file")
    p.add_argument("--revoke", action="store_true", help="rotate: stop accepting every older key at once")
    p.add_argument("--dir", help="ca-*: the CA's directory (0700)")
    p.add_argument("--name", help="ca-issue: the certificate's name (router, node1, ...)")
    p.add_argument("--out", help="ca-issue: where to write NAME.crt and NAME.key")
    p.add_argument("--ip", action="append", default=[], help="ca-issue: an IP address SAN (repeatable)")
    p.add_argument("--dns", action="append", default=[], help="ca-issue: another DNS SAN (repeatable)")
    p.add_argument("--hours", type=float, default=168, help="ca-issue: validity (default a week)")
    p.add_argument("--archive", help="backup, restore: the back-up file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command.startswith("ca-"):
        return _ca(args)
    if args.command == "pin":
        try:
            print(spki_pin(load_chain(args.cert or "")[0]))
        except KeyFileError as e:
            print(f"privllm-admin: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("backup", "restore"):
        return _backup(args)
    try:
        config = load_config(args.env, args.config)
        store = KeyRingStore(config.keys.state_dir, config.keys.rotation_interval, config.keys.overlap)
        now = int(time.time())
        if args.command == "rotate":
            ring = store.update(now, lambda r: r.rotate_now(now, suite.new_private_key, revoke=args.revoke))
            print("rotated; running routers adopt the new key within a minute")
            if args.revoke:
                # adoption, then the lifetime of a set signed before it, then the clients' clock skew
                bound = KeyRingService.CHECK_EVERY + config.keys.keyset_lifetime + KEYSET_CLOCK_SKEW
                print(f"revoked: no client accepts a key set naming the old keys after {_when(now + int(bound))}")
        else:
            ring = store.update(now)
        print("\n".join(describe(config, ring, now)))
    except (ConfigError, KeyFileError, OSError, ValueError) as e:
        print(f"privllm-admin: {e}", file=sys.stderr)
        return 2
    return 0


def _ca(args: argparse.Namespace) -> int:
    try:
        if not args.dir:
            raise ValueError("--dir is required")
        if args.command == "ca-init":
            print(create_ca(args.dir))
        else:
            if not args.name or not args.out:
                raise ValueError("--name and --out are required")
            print("\n".join(issue(args.dir, args.name, args.out, args.dns, args.ip, args.hours)))
    except (KeyFileError, OSError, ValueError) as e:
        print(f"privllm-admin: {e}", file=sys.stderr)
        return 2
    return 0


def _backup(args: argparse.Namespace) -> int:
    try:
        if not args.archive:
            raise ValueError("--archive is required")
        config = load_config(args.env, args.config)
        now = int(time.time())
        if args.command == "backup":
            print("\n".join(["backed up:", *backup(config, args.archive, now)]))
        else:
            written, ring = restore(config, args.archive, now)
            print("\n".join(["restored (0600):", *written, ring]))
    except (ConfigError, KeyFileError, OSError, ValueError) as e:
        print(f"privllm-admin: {e}", file=sys.stderr)
        return 2
    return 0


def entry_point() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry_point()
