"""
Test equipment: the production topology on loopback. A deployment CA and certificates
made with privllm's own PKI code, two inference nodes (`--role node`, each supervising its
own llama-server with the real model), and a router started exactly as documented,
`--env prod --config docs/examples/router.toml`, with only paths and ports overridden.
"""

from __future__ import annotations

import atexit
import http.client
import os
import re
import shutil
import ssl
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privllm.keys.files import ensure_private_dir, write_secret
from privllm.keys.pki import CA_CERT, create_ca, issue
from privllm.keys.tls import private_pem
from privllm.test.stack import Daemon

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "router.toml")


class Topology:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="privllm-topology-")
        pki = os.path.join(self.dir, "pki")
        create_ca(os.path.join(pki, "ca"))
        self.ca = os.path.join(pki, "ca", CA_CERT)
        certs = os.path.join(pki, "certs")
        self.router_cert = issue(os.path.join(pki, "ca"), "router", certs)
        self.public_cert = issue(os.path.join(pki, "ca"), "public", certs, ips=["127.0.0.1"])
        node_certs = [issue(os.path.join(pki, "ca"), f"node{i}", certs, ips=["127.0.0.1"]) for i in (1, 2)]
        self.expired_router = issue(
            os.path.join(pki, "ca"), "router", os.path.join(pki, "expired"), hours=1, start_hours_ago=2
        )
        create_ca(os.path.join(pki, "other-ca"))
        self.foreign_router = issue(os.path.join(pki, "other-ca"), "router", os.path.join(pki, "foreign"))
        self.wrong_name = node_certs[1]

        self.nodes = []
        for i, (cert, key) in enumerate(node_certs, start=1):
            node = Daemon(
                {
                    "server": {"certificate": cert, "private_key": key, "client_ca": self.ca},
                    "llama": {"metrics": True, "parallel": 2},
                    "metrics": {"enabled": False},
                },
                name=f"node{i}",
                role="node",
            )
            self.nodes.append(node.start(wait=False))

        secrets = os.path.join(self.dir, "secrets")
        ensure_private_dir(secrets)
        self.identity = Ed25519PrivateKey.generate()
        identity_path = os.path.join(secrets, "identity.key")
        write_secret(identity_path, private_pem(self.identity))
        self.router = Daemon(name="prod-router", env="prod", config_file=EXAMPLE, ca_file=self.ca)
        urls = [f"https://127.0.0.1:{n.port}" for n in self.nodes]
        self.router.environ.update(
            {
                "PRIVLLM_SERVER__HOST": '"127.0.0.1"',
                "PRIVLLM_SERVER__PORT": str(self.router.port),
                "PRIVLLM_SERVER__CERTIFICATE": self.public_cert[0],
                "PRIVLLM_SERVER__PRIVATE_KEY": self.public_cert[1],
                "PRIVLLM_METRICS__PORT": str(self.router.metrics_port),
                "PRIVLLM_KEYS__STATE_DIR": self.router.state_dir,
                "PRIVLLM_KEYS__IDENTITY_KEY": identity_path,
                "PRIVLLM_BACKEND__URLS": "[" + ", ".join(f'"{u}"' for u in urls) + "]",
                "PRIVLLM_BACKEND__CA": self.ca,
                "PRIVLLM_BACKEND__CLIENT_CERTIFICATE": self.router_cert[0],
                "PRIVLLM_BACKEND__CLIENT_KEY": self.router_cert[1],
                "PRIVLLM_BACKEND__HEALTH_INTERVAL": "0.5",
                "PRIVLLM_BACKEND__BREAKER_COOLDOWN": "1.0",
                "PRIVLLM_BACKEND__BALANCE": '"round_robin"',
                "PRIVLLM_RATE_LIMIT__PER_ADDRESS_RATE": "100.0",
                "PRIVLLM_RATE_LIMIT__PER_ADDRESS_BURST": "100",
            }
        )
        self.router.start()
        self.wait_nodes_healthy([True, True])

    def pin(self) -> bytes:
        return self.identity.public_key().public_bytes_raw()

    def node_healthy(self) -> list[bool | None]:
        """Per node: True if every router worker sees it healthy, False if none does (None: they differ)."""
        _, _, body = self.router.get("/metrics", tls=False)
        states: list[bool | None] = []
        for node in self.nodes:
            pattern = rf'^privllm_node_healthy{{node="https://127.0.0.1:{node.port}"(?:,pid="\d+")?}} ([0-9.]+)$'
            values = {float(v) for v in re.findall(pattern, body.decode(), re.M)}
            states.append(values == {1.0} if values in ({1.0}, {0.0}) else None if values else False)
        return states

    def wait_nodes_healthy(self, want: list[bool | None], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node_healthy() == want:
                return
            time.sleep(0.25)
        raise RuntimeError(f"nodes never became {want}: {self.node_healthy()}")

    def node_get(self, node: Daemon, cert: tuple[str, str] | None) -> int:
        context = ssl.create_default_context(cafile=self.ca)
        if cert:
            context.load_cert_chain(*cert)
        conn = http.client.HTTPSConnection("127.0.0.1", node.port, context=context, timeout=10)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        finally:
            conn.close()

    def cleanup(self) -> None:
        for daemon in [self.router, *self.nodes]:
            daemon.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


_topology: list[Topology] = []


def topology() -> Topology:
    if not _topology:
        t = Topology()
        atexit.register(t.cleanup)
        _topology.append(t)
    return _topology[0]
