"""
WireGuard for real: a router and an inference node in two network namespaces joined by a
veth pair, a userspace WireGuard tunnel (wireguard-go) between them, and a chat over the
tunnel addresses only. The node listens on its tunnel address alone, so its port is not
reachable over the veth address. Everything the test made is removed whatever happens.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, TestCase

from privllm.keys.pki import CA_CERT, create_ca, issue
from privllm.test.stack import Daemon, free_port

VETH_ROUTER, VETH_NODE = "10.200.0.1", "10.200.0.2"
WG_ROUTER, WG_NODE = "10.201.0.1", "10.201.0.2"
WG_PORT = 51820


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check, input=input, timeout=60).stdout.strip()


def netns_available() -> str | None:
    """None if namespaces, veth and userspace WireGuard can be used here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "wg", "wireguard-go", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap.sh installs it as root)"
    probe = f"pvprobe{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "this machine cannot create network namespaces"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class WireGuard(TestCase):
    timeout = 300

    def setUp(self) -> None:
        reason = netns_available()
        if reason:
            raise SkipTest(reason)
        tag = secrets.token_hex(3)
        self.ns_router, self.ns_node = f"pvr{tag}", f"pvn{tag}"
        self.wg_router, self.wg_node = f"wgr{tag}", f"wgn{tag}"  # control sockets share /var/run/wireguard
        self.dir = tempfile.mkdtemp(prefix="privllm-wg-")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Daemon] = []
        self.addCleanup(self.cleanup)
        for ns in (self.ns_router, self.ns_node):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        veth_r, veth_n = f"vr{tag}", f"vn{tag}"
        run("ip", "link", "add", veth_r, "netns", self.ns_router, "type", "veth", "peer", veth_n, "netns", self.ns_node)
        for ns, dev, addr in ((self.ns_router, veth_r, VETH_ROUTER), (self.ns_node, veth_n, VETH_NODE)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        self.tunnel()

    def tunnel(self) -> None:
        keys = {}
        for side in ("router", "node"):
            private = run("wg", "genkey")
            keys[side] = (private, run("wg", "pubkey", input=private))
        ends = (
            (self.ns_router, self.wg_router, WG_ROUTER, keys["router"], keys["node"][1], WG_NODE, VETH_NODE),
            (self.ns_node, self.wg_node, WG_NODE, keys["node"], keys["router"][1], WG_ROUTER, VETH_ROUTER),
        )
        for ns, dev, addr, (private, _), peer, peer_addr, peer_endpoint in ends:
            env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
            argv = ["ip", "netns", "exec", ns, "wireguard-go", "-f", dev]
            self.processes.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 20
            while subprocess.run(["ip", "-n", ns, "link", "show", dev], capture_output=True).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wireguard-go did not create {dev}")
                time.sleep(0.1)
            key_file = os.path.join(self.dir, f"{dev}.key")
            with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(private)
            run("ip", "netns", "exec", ns, "wg", "set", dev, "private-key", key_file, "listen-port", str(WG_PORT),
                "peer", peer, "allowed-ips", f"{peer_addr}/32", "endpoint", f"{peer_endpoint}:{WG_PORT}")  # fmt: skip
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def curl(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "5", *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    def test_chat_over_the_tunnel_only(self) -> None:
        pki = os.path.join(self.dir, "pki")
        create_ca(os.path.join(pki, "ca"))
        ca = os.path.join(pki, "ca", CA_CERT)
        router_cert = issue(os.path.join(pki, "ca"), "router", os.path.join(pki, "certs"))
        node_cert = issue(os.path.join(pki, "ca"), "node1", os.path.join(pki, "certs"), ips=[WG_NODE])
        node_port = free_port()
        node = Daemon(
            {
                "server": {"host": WG_NODE, "port": node_port, "certificate": node_cert[0], "private_key": node_cert[1],
                           "client_ca": ca},
                "metrics": {"enabled": False},
            },
            name="wg-node", role="node", netns=self.ns_node,
        )  # fmt: skip
        self.daemons.append(node.start(wait=False))
        router = Daemon(
            {
                "llama": {"spawn": False},
                "backend": {"urls": [f"https://{WG_NODE}:{node_port}"], "ca": ca,
                            "client_certificate": router_cert[0], "client_key": router_cert[1]},
            },
            name="wg-router", netns=self.ns_router,
        )  # fmt: skip
        self.daemons.append(router.start(wait=False))

        cacert = os.path.join(router.state_dir, "tls.crt")
        deadline = time.monotonic() + 120
        while True:
            ready = self.curl(self.ns_router, "--cacert", cacert, f"{router.url}/health/ready")
            if ready.returncode == 0 and '"ready"' in ready.stdout:
                break
            for d in self.daemons:
                if d.process is not None and d.process.poll() is not None:
                    self.fail(f"{d.role} exited:\n{d.log()}")
            if time.monotonic() > deadline:
                self.fail(f"the router never saw the node over the tunnel:\n{router.log()}\n{node.log()}")
            time.sleep(0.5)

        chat = subprocess.run(
            ["ip", "netns", "exec", self.ns_router, sys.executable, "-m", "privllm.client", "--url", router.url,
             "--state-dir", router.state_dir, "--device-key", os.path.join(self.dir, "device", "device.key"),
             "--max-tokens", "16", "Say hello."],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        self.assertEqual(chat.returncode, 0, chat.stderr)
        self.assertTrue(chat.stdout.strip())

        # The node is reachable on its tunnel address only; over the veth address, nothing listens.
        over_veth = self.curl(self.ns_router, "-k", f"https://{VETH_NODE}:{node_port}/health")
        self.assertEqual(over_veth.returncode, 7, over_veth.stderr)  # curl: could not connect
        over_tunnel = self.curl(self.ns_router, "-k", f"https://{WG_NODE}:{node_port}/health")
        self.assertNotIn(over_tunnel.returncode, (0, 7), "reachable, and refused without the router's certificate")
        handshakes = run("ip", "netns", "exec", self.ns_router, "wg", "show", self.wg_router, "latest-handshakes")
        self.assertNotEqual(handshakes.split()[-1], "0", "traffic went through WireGuard")

    def cleanup(self) -> None:
        for daemon in self.daemons:
            daemon.cleanup()
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for ns in (self.ns_router, self.ns_node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for dev in (self.wg_router, self.wg_node):
            for leftover in (f"/var/run/wireguard/{dev}.sock", f"/var/run/wireguard/{dev}.name"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        shutil.rmtree(self.dir, ignore_errors=True)
