"""Router and two inference nodes on loopback, with real mutual TLS and real llama-servers."""

from __future__ import annotations

import http.client
import json
import re
import ssl

from twisted.trial.unittest import TestCase

from .docclient import DocClient, open_stream
from .test_e2e import llama_metric, user
from .topology import topology


class Nodes(TestCase):
    timeout = 400

    def doc(self) -> DocClient:
        t = topology()
        return DocClient(t.router.port, t.router.ssl_context(), t.pin())

    def node_answers(self) -> float:
        """Responses the router got from its nodes, whatever their status."""
        _, _, body = topology().router.get("/metrics", tls=False)
        counts = re.findall(rb"^privllm_upstream_first_byte_seconds_count\{[^}]*\} ([0-9.e+]+)$", body, re.M)
        return sum(float(c) for c in counts)

    def test_chats_go_through_both_nodes(self) -> None:
        t = topology()
        t.wait_nodes_healthy([True, True])
        doc = self.doc()
        before = [llama_metric(node.llama_socket, "prompt_tokens_total") for node in t.nodes]
        for _ in range(4):
            self.assertEqual(doc.chat(user("Say hi."))[-1]["type"], "done")
        for node, tokens in zip(t.nodes, before, strict=True):
            self.assertGreater(llama_metric(node.llama_socket, "prompt_tokens_total"), tokens)

    def test_refused_chats_never_reach_a_node(self) -> None:
        """Each node forwards its slot context (/props) and tokenizer (/tokenize): an over-long
        conversation is refused before it is sent, and no node is counted as failing."""
        doc = self.doc()
        long = "word " * 3000
        conversation = {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": long},
                                     {"role": "user", "content": long}], "max_tokens": 8}  # fmt: skip
        before = self.node_answers()
        for _ in range(4):
            self.assertEqual(doc.chat(conversation)[-1]["code"], "too_long")
        self.assertEqual(self.node_answers(), before, "refused by the router, never sent to a node")
        surrogate = b'{"messages":[{"role":"user","content":"\\ud800"}]}'
        self.assertEqual(doc.chat(surrogate)[-1]["code"], "bad_request")
        for _ in range(4):
            self.assertEqual(doc.chat(user("Say hi."))[-1]["type"], "done")
        self.assertEqual(self.node_answers(), before + 4, "ordinary chats are counted")

    def test_node_accepts_only_the_router(self) -> None:
        t = topology()
        node = t.nodes[0]
        self.assertEqual(t.node_get(node, t.router_cert), 200)
        self.assertEqual(t.node_get(node, t.wrong_name), 403, "right CA, but not the router's name")
        for cert in (None, t.foreign_router, t.expired_router):
            with self.assertRaises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
                t.node_get(node, cert)

    def test_node_dying_mid_answer_ends_that_chat_and_rejoins(self) -> None:
        t = topology()
        doc = self.doc()
        body, enc, secret = doc.seal(
            user("Repeat the word hello forever: hello hello hello hello hello hello hello", 2000)
        )
        conn = doc.connection()
        conn.request("POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        raw = b""
        while raw.count(b"event: chunk") < 2:
            raw += response.read1(65536)
        busy = [n for n in t.nodes if llama_metric(n.llama_socket, "requests_processing") >= 1]
        self.assertEqual(len(busy), 1)
        victim = busy[0]
        survivor = next(n for n in t.nodes if n is not victim)
        assert victim.process is not None
        victim.process.kill()  # its llama-server follows (parent-death signal)
        victim.process.wait(timeout=30)
        while chunk := response.read1(65536):
            raw += chunk
        chunks = open_stream(raw, enc, secret)
        self.assertEqual(chunks[-1]["type"], "error")
        self.assertEqual(chunks[-1]["code"], "upstream_failed")

        before = llama_metric(survivor.llama_socket, "prompt_tokens_total")
        for _ in range(3):  # the next chats go to the other node
            self.assertEqual(doc.chat(user("Say hi."))[-1]["type"], "done")
        self.assertGreater(llama_metric(survivor.llama_socket, "prompt_tokens_total"), before)

        victim.start(wait=False)  # the node comes back and rejoins after a health check
        t.wait_nodes_healthy([True, True])
        for _ in range(4):
            self.assertEqual(doc.chat(user("Say hi."))[-1]["type"], "done")
        self.assertGreater(llama_metric(victim.llama_socket, "prompt_tokens_total"), 0)
