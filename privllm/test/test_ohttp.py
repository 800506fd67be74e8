"""
Oblivious HTTP core (privllm/protocol/ohttp): the published vectors byte for byte, hostile
input to every parser, and a cross-check with the independent HPKE of rfc9180.py.

Sources of the hex, copied exactly:
- RFC 9458 Appendix A: draft-ietf-ohai-ohttp.md, "Complete Example of a Request and Response",
  at github.com/ietf-wg-ohai/oblivious-http commit 384903d0dace9ed47e1f50609b4a10cdfabcf9a4
  (the working group's source of the RFC's text).
- draft-ietf-ohai-chunked-ohttp-08 Appendix A ("Example"): draft-ietf-ohai-chunked-ohttp.md at
  github.com/ietf-wg-ohai/draft-ohai-chunked-ohttp tag draft-ietf-ohai-chunked-ohttp-08
  (commit 5abd05c4d0fd4d01de53cf4c7e3c4d8c2173c979).
- RFC 9292 section 5: draft-ietf-httpbis-binary-message.md (number: 9292) at
  github.com/httpwg/http-extensions commit 6d77a3dc8ee4c9387443bbdf8844672f28e3b5e7.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import KEMKeyPair
from twisted.trial.unittest import TestCase

from ..protocol.errors import ProtocolError
from ..protocol.ohttp import bhttp, chunked, message
from ..protocol.ohttp.bhttp import Informational, Limits, Request, Response
from ..protocol.ohttp.bhttp_stream import (
    BinaryHttpStateError,
    End,
    Head,
    Part,
    ResponseDecoder,
    ResponseEncoder,
    StreamLimits,
)
from ..protocol.ohttp.chunked import (
    ChunkedRequestOpener,
    ChunkedRequestSealer,
    ChunkedResponseOpener,
    ChunkedResponseSealer,
    ChunkStateError,
)
from ..protocol.ohttp.errors import (
    AfterFinal,
    DecryptFailed,
    Malformed,
    OhttpError,
    TooLarge,
    TooManyChunks,
    Truncated,
    UnknownKey,
    Unsupported,
)
from ..protocol.ohttp.keyconfig import (
    MAX_CONFIGS,
    KeyConfig,
    encode_key_config,
    encode_key_configs,
    parse_key_config,
    parse_key_configs,
)
from ..protocol.ohttp.message import (
    GatewayKey,
    decapsulate_request,
    decapsulate_response,
    encapsulate_request,
    encapsulate_response,
)
from ..protocol.ohttp.suites import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    KEM_X25519,
    SymmetricSuite,
    hpke_suite,
)
from ..protocol.ohttp.wire import decode_varint, encode_varint, varint_size
from . import rfc9180

h = bytes.fromhex

AES128 = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM)
CHACHA = SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)
AES256 = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_256_GCM)

# RFC 9458 Appendix A
A_SKR = h("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
A_CONFIG = h("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003")
A_REQUEST = h("00034745540568747470730b6578616d706c652e636f6d012f")
A_SKE = h("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73")
A_PKE = h("4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472")
A_INFO = h("6d6573736167652f626874747020726571756573740001002000010001")
A_ENC_REQUEST = h(
    "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1"
    "9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796"
    "5e7d86b83dd440b2c0185204b4d63525"
)
A_RESPONSE = h("0140c8")
A_SECRET = h("62d87a6ba569ee81014c2641f52bea36")
A_RESPONSE_NONCE = h("c789e7151fcba46158ca84b04464910d")
A_PRK = h("979aaeae066cf211ab407b31ae49767f344e1501e475c84e8aff547cc5a683db")
A_AEAD_KEY = h("5d0172a080e428b16d298c4ea0db620d")
A_AEAD_NONCE = h("f6bf1aeb88d6df87007fa263")
A_ENC_RESPONSE = h("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd")

# draft-ietf-ohai-chunked-ohttp-08 Appendix A
C_SKR = h("1c190d72acdbe4dbc69e680503bb781a932c70a12c8f3754434c67d8640d8698")
C_CONFIG = h("010020668eb21aace159803974a4c67f08b4152d29bed10735fd08f98ccdd6fe09570800080001000100010003")
C_SKE = h("b26d565f3f875ed480d1abced3d665159650c99174fd0b124ac4bda0c64ae324")
C_PKE = h("8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032")
C_INFO = h("6d6573736167652f6268747470206368756e6b656420726571756573740001002000010001")
C_HEADER = h("01002000010001") + C_PKE
C_REQUEST_CHUNKS = [
    h("1c2ad24942d4d692563012f2980c8fef437a336b9b2fc938ef77a5834f"),
    h("1d2e33d8fd25577afe31bd1c79d094f76b6250ae6549b473ecd950501311"),
    h("001c6c1395d0ef7c1022297966307b8a7f"),
]
C_SECRET = h("1d4484834ae36102a6ac42a5523454d9")
C_RESPONSE_NONCE = h("bcce7f4cb921309ba5d62edf1769ef09")
C_PRK = h("3967884b5f7b4bce4a5320a3e3f79fdc97389f7deba1c1e11c5ea62278187786")
C_AEAD_KEY = h("8209f78f2a1610d80c7125009b00aff0")
C_AEAD_NONCE = h("fead854635d2d5527d64f546")
C_RESPONSE_CHUNKS = [
    h("1179bf1cc87fa0e2c02de4546945aa3d1e48"),
    h("12b348b5bd4c594c16b6170b07b475845d1f32"),
    h("00ed9d8a796617a5b27265f4d73247f639"),
]

# RFC 9292 section 5: "Known-Length Binary Encoding of Request" and "Known-Length Encoding of Response"
B_REQUEST = h(
    "0003474554056874747073000a2f68656c6c6f2e747874406c0a757365722d61"
    "67656e74346375726c2f372e31362e33206c69626375726c2f372e31362e3320"
    "4f70656e53534c2f302e392e376c207a6c69622f312e322e3304686f73740f77"
    "77772e6578616d706c652e636f6d0f6163636570742d6c616e67756167650665"
    "6e2c206d690000"
)
B_INDETERMINATE_REQUEST_HEAD = h(  # the first 23 bytes of "Indeterminate-Length Binary Encoding of Request"
    "0203474554056874747073000a2f68656c6c6f2e747874"
)
B_RESPONSE = h("0140c8001d5468697320636f6e74656e7420636f6e7461696e732043524c462e0d0a0d07747261696c65720474657874")


def key_pair(private: bytes) -> KEMKeyPair:
    kem = hpke_suite(KEM_X25519, AES128).kem
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    return KEMKeyPair(kem.deserialize_private_key(private), kem.deserialize_public_key(public))


def gateway(config_bytes: bytes, private: bytes) -> dict[int, GatewayKey]:
    config = parse_key_config(config_bytes)
    return {config.key_id: GatewayKey(config, key_pair(private).private_key)}


def fresh_gateway(key_id: int = 7, suites: tuple[SymmetricSuite, ...] = (CHACHA, AES128)) -> dict[int, GatewayKey]:
    private = os.urandom(32)
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    config = KeyConfig(key_id, KEM_X25519, public, suites)
    return {key_id: GatewayKey(config, key_pair(private).private_key)}


class ErrorAssertions(TestCase):
    def assertFails(
        self, error: type[OhttpError], code: str, f: Callable[..., object], *args: object, **kwargs: object
    ) -> OhttpError:
        with self.assertRaises(error) as cm:
            f(*args, **kwargs)
        self.assertIsInstance(cm.exception, OhttpError)
        self.assertEqual(cm.exception.code, code)
        return cm.exception


class Varints(TestCase):
    def test_boundaries(self) -> None:
        for value, size in ((0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), (2**30 - 1, 4), (2**30, 8)):
            encoded = encode_varint(value)
            self.assertEqual((len(encoded), varint_size(encoded[0]), decode_varint(encoded)), (size, size, value))
        self.assertEqual(encode_varint(200), h("40c8"))  # RFC 9458's status code
        self.assertEqual(decode_varint(h("4025")), 37)  # RFC 9000 A.1: two bytes for 37, not minimal
        self.assertRaises(ValueError, encode_varint, -1)
        self.assertRaises(ValueError, encode_varint, 2**62)


class Rfc9458KeyConfig(ErrorAssertions):
    def test_parse_and_encode_byte_for_byte(self) -> None:
        config = parse_key_config(A_CONFIG)
        self.assertEqual((config.key_id, config.kem_id), (1, KEM_X25519))
        self.assertEqual(config.suites, (AES128, CHACHA))
        self.assertEqual(config.public_key, rfc9180.public_key(A_SKR))
        self.assertEqual(encode_key_config(config), A_CONFIG)

    def test_ohttp_keys_list(self) -> None:
        other = parse_key_config(C_CONFIG)
        other = KeyConfig(2, other.kem_id, other.public_key, (AES256,))
        body = encode_key_configs([parse_key_config(A_CONFIG), other])
        self.assertEqual(body[:2], len(A_CONFIG).to_bytes(2, "big"))
        self.assertEqual(body[2 : 2 + len(A_CONFIG)], A_CONFIG)
        self.assertEqual(parse_key_configs(body), (parse_key_config(A_CONFIG), other))

    def test_every_truncation_and_trailing_byte(self) -> None:
        for n in range(len(A_CONFIG)):
            self.assertFails(Malformed, "malformed", parse_key_config, A_CONFIG[:n])
        self.assertFails(Malformed, "malformed", parse_key_config, A_CONFIG + b"\x00")
        listed = encode_key_configs([parse_key_config(A_CONFIG)])
        for n in range(len(listed)):
            self.assertFails(Malformed, "malformed", parse_key_configs, listed[:n])
        self.assertFails(Malformed, "malformed", parse_key_configs, listed + b"\x00")
        self.assertFails(Malformed, "malformed", parse_key_configs, listed + b"\x00\x00")  # an empty config

    def test_ids_outside_the_allow_list(self) -> None:
        for offset, value in (
            (1, b"\x00\x10"),
            (1, b"\x00\x21"),
            (37, b"\x00\x02"),  # a KDF
            (39, b"\x00\x04"),  # an AEAD
            (43, b"\xff\xff"),  # export-only
        ):
            bad = A_CONFIG[:offset] + value + A_CONFIG[offset + 2 :]
            self.assertFails(Unsupported, "unsupported", parse_key_config, bad)

    def test_suite_list_lengths(self) -> None:
        head = A_CONFIG[:35]
        for length in (0, 3, 5, 7):
            bad = head + length.to_bytes(2, "big") + A_CONFIG[37 : 37 + length]
            self.assertFails(Malformed, "malformed", parse_key_config, bad)
        self.assertFails(
            Malformed, "malformed", parse_key_config, head + h("0008 0001 0001 0001 0001".replace(" ", ""))
        )
        many = h("00010001") * 17
        self.assertFails(TooLarge, "too_large", parse_key_config, head + len(many).to_bytes(2, "big") + many)
        self.assertFails(
            Malformed, "malformed", parse_key_config, head + b"\x00\x0c" + A_CONFIG[37:]
        )  # longer than the data

    def test_list_counts_and_duplicates(self) -> None:
        config = parse_key_config(A_CONFIG)
        self.assertFails(Malformed, "malformed", parse_key_configs, b"")
        self.assertFails(Malformed, "malformed", parse_key_configs, encode_key_configs([config]) * 2)
        self.assertFails(Malformed, "malformed", encode_key_configs, [config, config])
        many = b"".join(len(A_CONFIG).to_bytes(2, "big") + bytes([i]) + A_CONFIG[1:] for i in range(MAX_CONFIGS + 1))
        self.assertFails(TooLarge, "too_large", parse_key_configs, many)
        self.assertEqual(len(parse_key_configs(many[: (MAX_CONFIGS) * (len(A_CONFIG) + 2)])), MAX_CONFIGS)

    def test_construction_is_checked(self) -> None:
        public = rfc9180.public_key(A_SKR)
        self.assertFails(Malformed, "malformed", KeyConfig, 256, KEM_X25519, public, (AES128,))
        self.assertFails(Malformed, "malformed", KeyConfig, 1, KEM_X25519, public[:31], (AES128,))
        self.assertFails(Malformed, "malformed", KeyConfig, 1, KEM_X25519, public, ())
        self.assertFails(Unsupported, "unsupported", KeyConfig, 1, 0x0010, public, (AES128,))
        self.assertFails(Unsupported, "unsupported", SymmetricSuite, 0x0002, AEAD_AES_128_GCM)


class Rfc9458Exchange(TestCase):
    def test_info(self) -> None:
        header = message.Header(1, KEM_X25519, AES128)
        self.assertEqual(header.info(message.REQUEST_LABEL), A_INFO)

    def test_request_byte_for_byte(self) -> None:
        enc_request, context = encapsulate_request(parse_key_config(A_CONFIG), AES128, A_REQUEST, key_pair(A_SKE))
        self.assertEqual(enc_request, A_ENC_REQUEST)
        self.assertEqual(context.enc, A_PKE)

    def test_request_opens(self) -> None:
        plaintext, context = decapsulate_request(gateway(A_CONFIG, A_SKR), A_ENC_REQUEST)
        self.assertEqual(plaintext, A_REQUEST)
        self.assertEqual(bhttp.decode_request(plaintext), Request(b"GET", b"https", b"example.com", b"/"))
        self.assertEqual(bhttp.encode_request(Request(b"GET", b"https", b"example.com", b"/")), A_REQUEST)
        self.assertEqual(context.hpke.export(message.RESPONSE_LABEL, 16), A_SECRET)

    def test_response_byte_for_byte(self) -> None:
        _, gateway_context = decapsulate_request(gateway(A_CONFIG, A_SKR), A_ENC_REQUEST)
        self.assertEqual(
            gateway_context.response_key(message.RESPONSE_LABEL, A_RESPONSE_NONCE), (A_AEAD_KEY, A_AEAD_NONCE)
        )
        self.assertEqual(encapsulate_response(gateway_context, A_RESPONSE, A_RESPONSE_NONCE), A_ENC_RESPONSE)

    def test_response_opens(self) -> None:
        _, client_context = encapsulate_request(parse_key_config(A_CONFIG), AES128, A_REQUEST, key_pair(A_SKE))
        plaintext = decapsulate_response(client_context, A_ENC_RESPONSE)
        self.assertEqual(plaintext, A_RESPONSE)
        self.assertEqual(bhttp.decode_response(plaintext), Response(200))
        self.assertEqual(bhttp.encode_response(Response(200)), A_RESPONSE)

    def test_fresh_exchange_each_suite(self) -> None:
        for suite in (AES128, CHACHA, AES256):
            keys = fresh_gateway(suites=(suite,))
            enc_request, client = encapsulate_request(keys[7].config, suite, b"ping")
            plaintext, server = decapsulate_request(keys, enc_request)
            self.assertEqual(plaintext, b"ping")
            enc_response = encapsulate_response(server, b"pong")
            self.assertEqual(len(enc_response), suite.entropy_size + 4 + 16)
            self.assertEqual(decapsulate_response(client, enc_response), b"pong")

    def test_fresh_randomness(self) -> None:
        config = parse_key_config(A_CONFIG)
        first, _ = encapsulate_request(config, AES128, A_REQUEST)
        second, _ = encapsulate_request(config, AES128, A_REQUEST)
        self.assertNotEqual(first[7:39], second[7:39])  # a fresh ephemeral key each time
        _, server = decapsulate_request(gateway(A_CONFIG, A_SKR), first)
        self.assertNotEqual(encapsulate_response(server, b"x")[:16], encapsulate_response(server, b"x")[:16])

    def test_gateway_key_must_match_its_config(self) -> None:
        self.assertRaises(ValueError, GatewayKey, parse_key_config(A_CONFIG), key_pair(C_SKR).private_key)

    def test_suite_not_offered_by_the_config(self) -> None:
        self.assertRaises(ValueError, encapsulate_request, parse_key_config(A_CONFIG), AES256, b"x")


class HostileRequests(ErrorAssertions):
    def setUp(self) -> None:
        self.keys = gateway(A_CONFIG, A_SKR)

    def open(self, data: bytes) -> bytes:
        return decapsulate_request(self.keys, data)[0]

    def test_every_truncation(self) -> None:
        for n in range(len(A_ENC_REQUEST)):
            if n < 7 + 32 + 16:
                self.assertFails(Malformed, "malformed", self.open, A_ENC_REQUEST[:n])
            else:
                self.assertFails(DecryptFailed, "decrypt_failed", self.open, A_ENC_REQUEST[:n])

    def test_trailing_bytes(self) -> None:
        self.assertFails(DecryptFailed, "decrypt_failed", self.open, A_ENC_REQUEST + b"\x00")

    def test_every_bit_flip(self) -> None:
        for i in range(len(A_ENC_REQUEST)):
            for bit in range(8):
                bad = bytearray(A_ENC_REQUEST)
                bad[i] ^= 1 << bit
                with self.assertRaises((UnknownKey, DecryptFailed)) as cm:
                    self.open(bytes(bad))
                if i < 6 or (i == 6 and (1 << bit) != 0x02):
                    # key id, KEM, KDF, or an AEAD the key does not offer: 0x0001 ^ 0x02 is ChaCha20Poly1305
                    self.assertIsInstance(cm.exception, UnknownKey, (i, bit))
                else:
                    self.assertIsInstance(cm.exception, DecryptFailed, (i, bit))

    def test_wrong_key_id_and_suite(self) -> None:
        self.assertFails(UnknownKey, "unknown_key", self.open, b"\x02" + A_ENC_REQUEST[1:])
        aes256 = A_ENC_REQUEST[:5] + b"\x00\x02" + A_ENC_REQUEST[7:]
        self.assertFails(UnknownKey, "unknown_key", self.open, aes256)
        self.assertFails(UnknownKey, "unknown_key", decapsulate_request, {}, A_ENC_REQUEST)
        other = fresh_gateway(key_id=1)
        self.assertFails(DecryptFailed, "decrypt_failed", decapsulate_request, other, A_ENC_REQUEST)

    def test_low_order_encapsulated_key(self) -> None:
        zero_point = A_ENC_REQUEST[:7] + bytes(32) + A_ENC_REQUEST[39:]
        self.assertFails(DecryptFailed, "decrypt_failed", self.open, zero_point)

    def test_oversize(self) -> None:
        self.assertFails(TooLarge, "too_large", decapsulate_request, self.keys, A_ENC_REQUEST, len(A_ENC_REQUEST) - 1)
        self.assertEqual(decapsulate_request(self.keys, A_ENC_REQUEST, len(A_ENC_REQUEST))[0], A_REQUEST)


class HostileResponses(ErrorAssertions):
    def setUp(self) -> None:
        _, self.client = encapsulate_request(parse_key_config(A_CONFIG), AES128, A_REQUEST, key_pair(A_SKE))

    def open(self, data: bytes) -> bytes:
        return decapsulate_response(self.client, data)

    def test_every_truncation(self) -> None:
        for n in range(len(A_ENC_RESPONSE)):
            if n < 16 + 16:
                self.assertFails(Malformed, "malformed", self.open, A_ENC_RESPONSE[:n])
            else:
                self.assertFails(DecryptFailed, "decrypt_failed", self.open, A_ENC_RESPONSE[:n])

    def test_every_bit_flip_and_trailing_bytes(self) -> None:
        for i in range(len(A_ENC_RESPONSE)):
            for bit in range(8):
                bad = bytearray(A_ENC_RESPONSE)
                bad[i] ^= 1 << bit
                self.assertFails(DecryptFailed, "decrypt_failed", self.open, bytes(bad))
        self.assertFails(DecryptFailed, "decrypt_failed", self.open, A_ENC_RESPONSE + b"\x00")

    def test_another_requests_context(self) -> None:
        _, other = encapsulate_request(parse_key_config(A_CONFIG), AES128, A_REQUEST)
        self.assertFails(DecryptFailed, "decrypt_failed", decapsulate_response, other, A_ENC_RESPONSE)

    def test_oversize(self) -> None:
        self.assertFails(TooLarge, "too_large", decapsulate_response, self.client, A_ENC_RESPONSE, 34)

    def test_nonce_size_checked(self) -> None:
        _, server = decapsulate_request(gateway(A_CONFIG, A_SKR), A_ENC_REQUEST)
        self.assertRaises(ValueError, encapsulate_response, server, b"x", A_RESPONSE_NONCE[:12])


class ChunkedVectors(TestCase):
    """draft-ietf-ohai-chunked-ohttp-08 Appendix A: a request in chunks of 12, 13 and 0 bytes,
    a response in chunks of 1, 2 and 0 bytes."""

    def seal_request(self) -> ChunkedRequestSealer:
        return ChunkedRequestSealer(parse_key_config(C_CONFIG), AES128, key_pair(C_SKE))

    def test_info(self) -> None:
        self.assertEqual(message.Header(1, KEM_X25519, AES128).info(chunked.REQUEST_LABEL), C_INFO)

    def test_request_byte_for_byte(self) -> None:
        sealer = self.seal_request()
        out = [sealer.seal(A_REQUEST[:12]), sealer.seal(A_REQUEST[12:]), sealer.seal(b"", final=True)]
        self.assertEqual(out, [C_HEADER + C_REQUEST_CHUNKS[0], *C_REQUEST_CHUNKS[1:]])
        self.assertTrue(sealer.finished)

    def test_request_opens_byte_by_byte(self) -> None:
        opener = ChunkedRequestOpener(gateway(C_CONFIG, C_SKR))
        stream = C_HEADER + b"".join(C_REQUEST_CHUNKS)
        chunks = [chunk for i in range(len(stream)) for chunk in opener.feed(stream[i : i + 1])]
        self.assertEqual((chunks, opener.end()), ([A_REQUEST[:12], A_REQUEST[12:]], b""))
        assert opener.context is not None
        self.assertEqual(opener.context.hpke.export(chunked.RESPONSE_LABEL, 16), C_SECRET)
        self.assertEqual(
            opener.context.response_key(chunked.RESPONSE_LABEL, C_RESPONSE_NONCE), (C_AEAD_KEY, C_AEAD_NONCE)
        )

    def test_response_byte_for_byte(self) -> None:
        opener = ChunkedRequestOpener(gateway(C_CONFIG, C_SKR))
        opener.feed(C_HEADER + b"".join(C_REQUEST_CHUNKS))
        opener.end()
        assert opener.context is not None
        sealer = ChunkedResponseSealer(opener.context, C_RESPONSE_NONCE)
        out = [sealer.seal(A_RESPONSE[:1]), sealer.seal(A_RESPONSE[1:]), sealer.seal(b"", final=True)]
        self.assertEqual(out, [C_RESPONSE_NONCE + C_RESPONSE_CHUNKS[0], *C_RESPONSE_CHUNKS[1:]])

    def test_response_opens(self) -> None:
        opener = ChunkedResponseOpener(self.seal_request().context)
        stream = C_RESPONSE_NONCE + b"".join(C_RESPONSE_CHUNKS)
        self.assertEqual(opener.feed(stream), [A_RESPONSE[:1], A_RESPONSE[1:]])
        self.assertEqual(opener.end(), b"")

    def test_prk(self) -> None:
        """The draft's intermediate PRK, from its secret and salt with an independent HKDF."""
        self.assertEqual(hmac.new(C_PKE + C_RESPONSE_NONCE, C_SECRET, hashlib.sha256).digest(), C_PRK)
        self.assertEqual(hmac.new(A_PKE + A_RESPONSE_NONCE, A_SECRET, hashlib.sha256).digest(), A_PRK)


class Pair:
    """Both ends of a chunked response to a fresh request: contexts, a sealer and an opener."""

    def __init__(self, max_chunk: int = chunked.MAX_CHUNK, max_chunks: int = chunked.MAX_CHUNKS) -> None:
        keys = fresh_gateway()
        request = ChunkedRequestSealer(keys[7].config, CHACHA)
        gateway_side = ChunkedRequestOpener(keys)
        gateway_side.feed(request.seal(b"req", final=True))
        gateway_side.end()
        assert gateway_side.context is not None
        self.server, self.client = gateway_side.context, request.context
        self.max_chunk, self.max_chunks = max_chunk, max_chunks
        self.sealer = ChunkedResponseSealer(self.server, max_chunk=max_chunk, max_chunks=max_chunks)
        self.opener = self.reader()

    def reader(self) -> ChunkedResponseOpener:
        return ChunkedResponseOpener(self.client, self.max_chunk, self.max_chunks)

    def stream(self, chunks: list[bytes]) -> bytes:
        return b"".join(self.sealer.seal(c) for c in chunks[:-1]) + self.sealer.seal(chunks[-1], final=True)


class ChunkedResponses(ErrorAssertions):
    def test_any_split(self) -> None:
        plaintexts = [b"Hel", b"lo ", "wörld".encode(), b"x" * 300, b"!"]
        pair = Pair()
        wire = pair.stream(plaintexts)
        rng = random.Random(9458)
        for _ in range(50):
            cuts = sorted(rng.sample(range(1, len(wire)), rng.randint(0, 12)))
            opener = pair.reader()
            got = [c for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True) for c in opener.feed(wire[a:b])]
            self.assertEqual([*got, opener.end()], plaintexts)

    def test_truncation(self) -> None:
        pair = Pair()
        self.assertEqual(pair.opener.feed(pair.sealer.seal(b"a") + pair.sealer.seal(b"b")), [b"a", b"b"])
        self.assertFails(Truncated, "truncated", pair.opener.end)
        self.assertFails(AfterFinal, "after_final", pair.opener.feed, b"")
        self.assertFails(Truncated, "truncated", pair.reader().end)  # not even the nonce

    def test_every_truncation_of_a_stream(self) -> None:
        pair = Pair()
        wire = pair.stream([b"one", b"two", b"end"])
        final_start = len(wire) - (3 + 16)  # the zero length is in
        for n in range(len(wire)):
            opener = pair.reader()
            opener.feed(wire[:n])
            if n < final_start:
                self.assertFails(Truncated, "truncated", opener.end)
            else:  # the zero length arrived, the final chunk is cut short
                self.assertFails(DecryptFailed, "decrypt_failed", opener.end)

    def test_chunk_after_final(self) -> None:
        pair = Pair()
        pair.opener.feed(pair.sealer.seal(b"done", final=True))
        self.assertEqual(pair.opener.end(), b"done")
        self.assertFails(AfterFinal, "after_final", pair.opener.feed, b"\x01x")
        self.assertFails(AfterFinal, "after_final", pair.opener.end)
        self.assertRaises(ChunkStateError, pair.sealer.seal, b"more")

    def test_bytes_after_the_final_chunk_break_it(self) -> None:
        pair = Pair()
        pair.opener.feed(pair.sealer.seal(b"done", final=True) + encode_varint(1) + b"x")
        self.assertFails(DecryptFailed, "decrypt_failed", pair.opener.end)

    def test_final_reframed_as_non_final(self) -> None:
        pair = Pair()
        final = pair.sealer.seal(b"done", final=True)
        sealed = final[33:]
        reframed = final[:32] + encode_varint(len(sealed)) + sealed
        self.assertFails(DecryptFailed, "decrypt_failed", pair.opener.feed, reframed)

    def test_non_final_reframed_as_final(self) -> None:
        pair = Pair()
        first = pair.sealer.seal(b"first")
        pair.opener.feed(first[:32] + b"\x00" + first[33:])  # the nonce, then a zero length for the sealed chunk
        self.assertFails(DecryptFailed, "decrypt_failed", pair.opener.end)

    def test_reordered_chunks(self) -> None:
        pair = Pair()
        first, second = pair.sealer.seal(b"first"), pair.sealer.seal(b"second")
        self.assertFails(DecryptFailed, "decrypt_failed", pair.opener.feed, first[:32] + second)
        self.assertFails(AfterFinal, "after_final", pair.opener.feed, first[32:])  # the reader stopped

    def test_every_bit_flip(self) -> None:
        pair = Pair()
        wire = pair.stream([b"ab", b"cd"])
        for i in range(len(wire)):
            bad = bytearray(wire)
            bad[i] ^= 0x01
            opener = pair.reader()
            with self.assertRaises(OhttpError) as cm:
                opener.feed(bytes(bad))
                opener.end()
            # a flipped length prefix can read as a longer chunk that never completes
            self.assertIn(type(cm.exception), (DecryptFailed, Truncated), i)

    def test_empty_non_final_chunk_is_a_decryption_error(self) -> None:
        pair = Pair()
        nonce = pair.sealer.seal(b"x")[:32]
        key, aead_nonce = pair.server.response_key(chunked.RESPONSE_LABEL, nonce)
        empty = pair.server.suite.aead(key).encrypt(aead_nonce, b"", b"")
        self.assertFails(DecryptFailed, "decrypt_failed", pair.opener.feed, nonce + encode_varint(len(empty)) + empty)

    def test_oversize_chunk_refused_before_it_arrives(self) -> None:
        pair = Pair(max_chunk=64)
        self.assertEqual(pair.opener.feed(pair.sealer.seal(b"x" * 64)), [b"x" * 64])
        self.assertFails(TooLarge, "too_large", pair.opener.feed, encode_varint(64 + 16 + 1))
        self.assertRaises(ChunkStateError, pair.sealer.seal, b"x" * 65)

    def test_oversize_final_chunk(self) -> None:
        pair = Pair(max_chunk=64)
        pair.opener.feed(pair.sealer.seal(b"x")[:32] + b"\x00")  # the nonce, a zero length: the final chunk follows
        pair.opener.feed(b"y" * (64 + 16))
        self.assertFails(TooLarge, "too_large", pair.opener.feed, b"y")

    def test_counter_limit(self) -> None:
        pair = Pair(max_chunks=3)
        wire = pair.sealer.seal(b"1") + pair.sealer.seal(b"2") + pair.sealer.seal(b"3")
        self.assertRaises(ChunkStateError, pair.sealer.seal, b"", final=True)
        self.assertEqual(pair.opener.feed(wire), [b"1", b"2", b"3"])
        pair.opener.feed(b"\x00" + bytes(16))
        self.assertFails(TooManyChunks, "too_many_chunks", pair.opener.end)

    def test_sealer_rules(self) -> None:
        pair = Pair()
        self.assertRaises(ChunkStateError, pair.sealer.seal, b"")
        self.assertEqual(len(pair.sealer.seal(b"", final=True)), 32 + 1 + 16)  # the nonce, a zero length, a tag
        self.assertRaises(ValueError, ChunkedResponseSealer, pair.server, bytes(16))  # ChaCha20's nonce is 32 bytes

    def test_a_sealer_misuse_is_no_peer_error(self) -> None:
        """A reader of peer bytes catches OhttpError; a bug on this side must not pass as one."""
        pair = Pair()
        with self.assertRaises(ChunkStateError) as cm:
            pair.sealer.seal(b"")
        self.assertNotIsInstance(cm.exception, OhttpError)
        self.assertIsInstance(cm.exception, ProtocolError)


class ErrorCodes(TestCase):
    def test_an_instance_answers_with_its_wire_code(self) -> None:
        """The class code is unique among privllm's errors; the instance carries the wire one."""
        self.assertEqual((Malformed.code, Malformed("x").code), ("ohttp_malformed", "malformed"))
        self.assertEqual((UnknownKey.code, UnknownKey("x").code), ("ohttp_unknown_key", "unknown_key"))
        self.assertEqual((DecryptFailed.code, DecryptFailed("x").code), ("ohttp_decrypt_failed", "decrypt_failed"))
        self.assertIsInstance(TooLarge("x"), ProtocolError)


class ChunkedRequests(ErrorAssertions):
    def setUp(self) -> None:
        self.keys = gateway(C_CONFIG, C_SKR)
        self.wire = C_HEADER + b"".join(C_REQUEST_CHUNKS)

    def test_unknown_key_from_the_header_alone(self) -> None:
        opener = ChunkedRequestOpener(self.keys)
        self.assertEqual(opener.feed(b"\x09" + self.wire[1:6]), [])
        self.assertFails(UnknownKey, "unknown_key", opener.feed, self.wire[6:7])
        self.assertFails(AfterFinal, "after_final", opener.feed, self.wire[7:])
        opener = ChunkedRequestOpener(self.keys)
        self.assertFails(UnknownKey, "unknown_key", opener.feed, self.wire[:5] + b"\x00\x02")

    def test_every_truncation(self) -> None:
        final_start = len(self.wire) - 16  # the zero length is in
        for n in range(len(self.wire)):
            opener = ChunkedRequestOpener(self.keys)
            opener.feed(self.wire[:n])
            if n < final_start:
                self.assertFails(Truncated, "truncated", opener.end)
            else:
                self.assertFails(DecryptFailed, "decrypt_failed", opener.end)

    def test_every_bit_flip_after_the_header(self) -> None:
        for i in range(7, len(self.wire)):
            bad = bytearray(self.wire)
            bad[i] ^= 0x01
            opener = ChunkedRequestOpener(self.keys)
            with self.assertRaises(OhttpError) as cm:
                opener.feed(bytes(bad))
                opener.end()
            self.assertIn(type(cm.exception), (DecryptFailed, Truncated), i)

    def test_counter_and_size_limits(self) -> None:
        opener = ChunkedRequestOpener(self.keys, max_chunks=2)
        self.assertEqual(len(opener.feed(self.wire)), 2)
        self.assertFails(TooManyChunks, "too_many_chunks", opener.end)
        opener = ChunkedRequestOpener(self.keys, max_chunk=12)
        self.assertFails(TooLarge, "too_large", opener.feed, self.wire)  # the second chunk holds 13 bytes

    def test_fresh_round_trip(self) -> None:
        keys = fresh_gateway()
        sealer = ChunkedRequestSealer(keys[7].config, AES256 if AES256 in keys[7].config.suites else CHACHA)
        opener = ChunkedRequestOpener(keys)
        got = opener.feed(sealer.seal(b"a") + sealer.seal(b"b"))
        got += opener.feed(sealer.seal(b"c", final=True))
        self.assertEqual([*got, opener.end()], [b"a", b"b", b"c"])


class BinaryHttp(ErrorAssertions):
    def test_rfc9292_request(self) -> None:
        request = bhttp.decode_request(B_REQUEST)
        self.assertEqual(
            (request.method, request.scheme, request.authority, request.path), (b"GET", b"https", b"", b"/hello.txt")
        )
        self.assertEqual(
            request.headers,
            (
                (b"user-agent", b"curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
                (b"host", b"www.example.com"),
                (b"accept-language", b"en, mi"),
            ),
        )
        self.assertEqual(bhttp.encode_request(request, truncate=False), B_REQUEST)
        self.assertEqual(bhttp.encode_request(request), B_REQUEST[:-2])  # content and trailers truncated

    def test_rfc9292_response(self) -> None:
        response = bhttp.decode_response(B_RESPONSE)
        self.assertEqual(response, Response(200, (), b"This content contains CRLF.\r\n", ((b"trailer", b"text"),)))
        self.assertEqual(bhttp.encode_response(response), B_RESPONSE)

    def test_truncation_only_before_a_length(self) -> None:
        """RFC 9292 section 3.8: after the control data, the header section or the content."""
        allowed = {23, len(B_REQUEST) - 2, len(B_REQUEST) - 1, len(B_REQUEST)}
        for n in range(len(B_REQUEST) + 1):
            if n in allowed:
                self.assertEqual(bhttp.decode_request(B_REQUEST[:n]).path, b"/hello.txt")
            else:
                self.assertFails(Malformed, "malformed", bhttp.decode_request, B_REQUEST[:n])
        for n in range(len(B_RESPONSE) + 1):
            if n in (3, 4, len(B_RESPONSE) - 14, len(B_RESPONSE)):
                self.assertEqual(bhttp.decode_response(B_RESPONSE[:n]).status, 200)
            else:
                self.assertFails(Malformed, "malformed", bhttp.decode_response, B_RESPONSE[:n])

    def test_padding(self) -> None:
        self.assertEqual(bhttp.decode_request(B_REQUEST + bytes(10)), bhttp.decode_request(B_REQUEST))
        self.assertEqual(bhttp.decode_response(A_RESPONSE + bytes(3)), Response(200))
        self.assertFails(Malformed, "malformed", bhttp.decode_request, B_REQUEST + b"\x00\x01")
        self.assertFails(Malformed, "malformed", bhttp.decode_response, B_RESPONSE + b"\x01")

    def test_framing_indicator(self) -> None:
        self.assertFails(Unsupported, "unsupported", bhttp.decode_request, B_INDETERMINATE_REQUEST_HEAD)
        self.assertFails(Unsupported, "unsupported", bhttp.decode_response, b"\x03\x40\xc8")
        self.assertEqual(bhttp.decode_request(b"\x40\x00" + A_REQUEST[1:]).path, b"/")  # any varint size is valid
        for framing in (b"\x01", b"\x04", b"\x40\x01"):
            self.assertFails(Malformed, "malformed", bhttp.decode_request, framing + A_REQUEST[1:])
        self.assertFails(Malformed, "malformed", bhttp.decode_response, A_REQUEST)

    def test_fields_are_checked(self) -> None:
        def with_header(name: bytes, value: bytes) -> bytes:
            line = encode_varint(len(name)) + name + encode_varint(len(value)) + value
            return A_REQUEST + encode_varint(len(line)) + line

        self.assertEqual(bhttp.decode_request(with_header(b"x-ok", b"a b")).headers, ((b"x-ok", b"a b"),))
        for name, value in (
            (b"Host", b"x"),
            (b":path", b"/"),
            (b"a b", b"x"),
            (b"", b"x"),
            (b"x\x00", b"x"),
            (b"x", b"a\r\nb"),
            (b"x", b"\x00"),
            (b"x", b" a"),
            (b"x", b"a\t"),
        ):
            self.assertFails(Malformed, "malformed", bhttp.decode_request, with_header(name, value))
        # a field line that runs past its section
        self.assertFails(Malformed, "malformed", bhttp.decode_request, A_REQUEST + b"\x03\x01x\x05ab")

    def test_control_data_is_checked(self) -> None:
        for request in (
            (b"", b"https", b"a", b"/"),
            (b"G T", b"https", b"a", b"/"),
            (b"GET", b"", b"a", b"/"),
            (b"GET", b"1ttp", b"a", b"/"),
            (b"GET", b"https", b"a b", b"/"),
            (b"GET", b"https", b"a", b""),
            (b"GET", b"https", b"a", b"/\x7f"),
        ):
            encoded = b"\x00" + b"".join(encode_varint(len(part)) + part for part in request)
            self.assertFails(Malformed, "malformed", bhttp.decode_request, encoded)
            self.assertFails(Malformed, "malformed", Request, *request)

    def test_status_codes(self) -> None:
        for status in (0, 99, 600, 1000):
            self.assertFails(Malformed, "malformed", bhttp.decode_response, b"\x01" + encode_varint(status))
        response = Response(204, informational=(Informational(103, ((b"link", b"</a.css>"),)), Informational(100)))
        encoded = bhttp.encode_response(response)
        self.assertEqual(encoded[:2], b"\x01\x40")
        self.assertEqual(bhttp.decode_response(encoded), response)
        self.assertFails(Malformed, "malformed", bhttp.decode_response, b"\x01\x40\x67")  # 103, then nothing

    def test_limits(self) -> None:
        limits = Limits(max_fields=2, max_section=32, max_content=8, max_informational=1)
        three = bhttp.encode_request(Request(b"GET", b"https", b"a", b"/", ((b"a", b"1"),) * 3))
        self.assertFails(TooLarge, "too_large", bhttp.decode_request, three, limits)
        big = bhttp.encode_request(Request(b"GET", b"https", b"a", b"/", ((b"a", b"x" * 40),)))
        self.assertFails(TooLarge, "too_large", bhttp.decode_request, big, limits)
        content = bhttp.encode_response(Response(200, content=b"x" * 9))
        self.assertFails(TooLarge, "too_large", bhttp.decode_response, content, limits)
        eight = bhttp.encode_response(Response(200, content=b"x" * 8))
        self.assertEqual(bhttp.decode_response(eight, limits).content, b"x" * 8)
        two_early = bhttp.encode_response(Response(200, informational=(Informational(100), Informational(103))))
        self.assertFails(TooLarge, "too_large", bhttp.decode_response, two_early, limits)
        # a declared length far beyond the data is refused by its size, not read
        self.assertFails(
            TooLarge, "too_large", bhttp.decode_response, b"\x01\x40\xc8\x00\xbf\xff\xff\xff\xff\xff\xff\xff"
        )


def decode_all(wire: bytes, splits: list[int], limits: StreamLimits = StreamLimits()) -> list[Part]:
    """Every part of `wire` fed at the given cut points, content bytes joined per run."""
    decoder = ResponseDecoder(limits)
    parts: list[Part] = []
    for start, end in zip([0, *splits], [*splits, len(wire)], strict=True):
        parts += decoder.feed(wire[start:end])
    parts += decoder.end()
    joined: list[Part] = []
    for part in parts:
        if isinstance(part, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += part
        else:
            joined.append(part)
    return joined


def streamed(status: int = 200, headers: tuple[bhttp.Field, ...] = (), chunks: tuple[bytes, ...] = ()) -> bytes:
    encoder = ResponseEncoder()
    return encoder.head(status, headers) + b"".join(map(encoder.content, chunks)) + encoder.end()


class IndeterminateBinaryHttp(ErrorAssertions):
    """RFC 9292 section 3.2, framing indicator 3, streamed."""

    def test_the_encoding_spelled_out(self) -> None:
        wire = streamed(200, ((b"content-type", b"x"),), (b"hello", b" world"))
        self.assertEqual(
            wire,
            h("0340c80c") + b"content-type" + h("01") + b"x" + h("0005") + b"hello" + h("06") + b" world" + h("0000"),
        )

    def test_any_split(self) -> None:
        headers = ((b"content-type", b"application/privllm-events"), (b"date", b"Mon, 30 Nov 2026 08:30:01 GMT"))
        chunks = (b"a", b"x" * 300, "wörld".encode(), b"\x00" * 70)
        wire = streamed(201, headers, chunks)
        expected = [Head(201, headers), b"".join(chunks), End()]
        rng = random.Random(9292)
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(wire)), rng.randrange(0, 12)))
            self.assertEqual(decode_all(wire, cuts), expected)
        self.assertEqual(decode_all(wire, list(range(1, len(wire)))), expected)

    def test_content_arrives_before_its_chunk_completes(self) -> None:
        wire = streamed(chunks=(b"abcdef",))
        decoder = ResponseDecoder()
        self.assertEqual(decoder.feed(wire[:7]), [Head(200), b"ab"])
        self.assertEqual(decoder.feed(wire[7:9]), [b"cd"])

    def test_informational_and_trailers(self) -> None:
        wire = h("03406704") + b"link" + h("01") + b"x" + h("0040c80001") + b"z" + h("0001") + b"t"
        wire += h("01") + b"v" + h("00")
        self.assertEqual(
            decode_all(wire, [3, 9]),
            [Head(200, (), (Informational(103, ((b"link", b"x"),)),)), b"z", End(((b"t", b"v"),))],
        )

    def test_truncation_only_where_empty_sections_are_left_out(self) -> None:
        wire = streamed(chunks=(b"abc",))
        head = len(ResponseEncoder().head(200))
        allowed = {
            head: [Head(200), End()],  # content and trailers never begun
            len(wire) - 1: [Head(200), b"abc", End()],  # the trailer section left out
            len(wire): [Head(200), b"abc", End()],
        }
        for n in range(len(wire) + 1):
            decoder = ResponseDecoder()
            parts = decoder.feed(wire[:n])
            if n in allowed:
                self.assertEqual(parts + decoder.end(), allowed[n])
            else:
                self.assertFails(Truncated, "truncated", decoder.end)
            self.assertFails(AfterFinal, "after_final", decoder.feed, b"")

    def test_padding(self) -> None:
        wire = streamed(chunks=(b"abc",))
        self.assertEqual(decode_all(wire + bytes(9), [len(wire) + 2]), [Head(200), b"abc", End()])
        decoder = ResponseDecoder()
        decoder.feed(wire + bytes(2))
        self.assertFails(Malformed, "malformed", decoder.feed, b"\x00\x01")
        self.assertFails(AfterFinal, "after_final", decoder.feed, b"")

    def test_framing_and_status(self) -> None:
        self.assertFails(Unsupported, "unsupported", ResponseDecoder().feed, A_RESPONSE)  # known-length
        for framing in (b"\x00", b"\x02", b"\x04"):
            self.assertFails(Malformed, "malformed", ResponseDecoder().feed, framing)
        for status in (0, 99, 600, 1000):
            self.assertFails(Malformed, "malformed", ResponseDecoder().feed, b"\x03" + encode_varint(status))
        self.assertEqual(ResponseDecoder().feed(b"\x40\x03\x40\xc8\x00"), [Head(200)])  # any varint size

    def test_fields_are_checked(self) -> None:
        for name, value in ((b"Host", b"x"), (b":status", b"200"), (b"x", b"a\r\nb"), (b"x", b" a")):
            line = encode_varint(len(name)) + name + encode_varint(len(value)) + value
            self.assertFails(Malformed, "malformed", ResponseDecoder().feed, b"\x03\x40\xc8" + line + b"\x00")
            trailer = streamed()[:-1] + line + b"\x00"
            self.assertFails(Malformed, "malformed", ResponseDecoder().feed, trailer)
            self.assertRaises(Malformed, ResponseEncoder().head, 200, ((name, value),))

    def test_limits_refuse_before_the_bytes_arrive(self) -> None:
        limits = StreamLimits(max_fields=2, max_section=32, max_chunk=8, max_informational=1)
        self.assertFails(TooLarge, "too_large", ResponseDecoder(limits).feed, streamed(headers=((b"a", b"1"),) * 3))
        self.assertFails(TooLarge, "too_large", ResponseDecoder(limits).feed, b"\x03\x40\xc8\x01a\x40\x40")
        self.assertFails(TooLarge, "too_large", ResponseDecoder(limits).feed, b"\x03\x40\xc8\x40\x40")
        self.assertFails(TooLarge, "too_large", ResponseDecoder(limits).feed, b"\x03\x40\xc8\x00\x09")
        self.assertEqual(decode_all(streamed(chunks=(b"x" * 8,)), [], limits)[1], b"x" * 8)
        self.assertFails(TooLarge, "too_large", ResponseDecoder(limits).feed, b"\x03\x40\x64\x00\x40\x64\x00")

    def test_encoder_order(self) -> None:
        encoder = ResponseEncoder()
        self.assertRaises(BinaryHttpStateError, encoder.content, b"x")
        self.assertRaises(BinaryHttpStateError, encoder.end)
        encoder.head(200)
        self.assertRaises(BinaryHttpStateError, encoder.head, 200)
        self.assertRaises(BinaryHttpStateError, encoder.content, b"")
        encoder.end()
        self.assertRaises(BinaryHttpStateError, encoder.content, b"x")
        self.assertRaises(BinaryHttpStateError, encoder.end)
        self.assertRaises(Malformed, ResponseEncoder().head, 101)
        self.assertNotIsInstance(BinaryHttpStateError("x"), OhttpError)


class IndependentHpke(TestCase):
    """rfc9180.py (HPKE from the RFC and `cryptography` primitives) against pyhpke's side."""

    def test_rfc9458_request_with_the_equipment(self) -> None:
        pk_r = rfc9180.public_key(A_SKR)
        enc, ctx = rfc9180.setup_base_sender(pk_r, A_INFO, A_SKE, rfc9180.AEAD_AES_128_GCM)
        self.assertEqual(A_ENC_REQUEST[:7] + enc + ctx.seal(b"", A_REQUEST), A_ENC_REQUEST)
        receiver = rfc9180.setup_base_receiver(A_PKE, A_SKR, A_INFO, rfc9180.AEAD_AES_128_GCM)
        self.assertEqual(receiver.open(b"", A_ENC_REQUEST[39:]), A_REQUEST)
        self.assertEqual(receiver.export(b"message/bhttp response", 16), A_SECRET)

    def test_chunked_request_with_the_equipment(self) -> None:
        """The draft's chunks open in sequence under the equipment's HPKE context, the last with "final"."""
        receiver = rfc9180.setup_base_receiver(C_PKE, C_SKR, C_INFO, rfc9180.AEAD_AES_128_GCM)
        self.assertEqual(receiver.open(b"", C_REQUEST_CHUNKS[0][1:]), A_REQUEST[:12])
        self.assertEqual(receiver.open(b"", C_REQUEST_CHUNKS[1][1:]), A_REQUEST[12:])
        self.assertEqual(receiver.open(b"final", C_REQUEST_CHUNKS[2][1:]), b"")
        self.assertEqual(receiver.export(chunked.RESPONSE_LABEL, 16), C_SECRET)

    def test_equipment_request_opens_at_the_gateway(self) -> None:
        for suite, aead in ((CHACHA, rfc9180.AEAD), (AES128, rfc9180.AEAD_AES_128_GCM)):
            keys = fresh_gateway(suites=(suite,))
            config = keys[7].config
            header = message.Header(7, KEM_X25519, suite)
            enc, ctx = rfc9180.setup_base_sender(
                config.public_key, header.info(message.REQUEST_LABEL), os.urandom(32), aead
            )
            plaintext, server = decapsulate_request(keys, header.encode() + enc + ctx.seal(b"", b"hello"))
            self.assertEqual(plaintext, b"hello")
            # the gateway's response, opened with the equipment's export and an independent HKDF
            enc_response = encapsulate_response(server, b"world")
            nonce, sealed = enc_response[: suite.entropy_size], enc_response[suite.entropy_size :]
            secret = ctx.export(message.RESPONSE_LABEL, suite.entropy_size)
            prk = hmac.new(enc + nonce, secret, hashlib.sha256).digest()
            key = hmac.new(prk, b"key\x01", hashlib.sha256).digest()[: suite.key_size]
            aead_nonce = hmac.new(prk, b"nonce\x01", hashlib.sha256).digest()[:12]
            self.assertEqual(suite.aead(key).decrypt(aead_nonce, sealed, b""), b"world")

    def test_gateway_side_request_opens_with_the_equipment(self) -> None:
        private = os.urandom(32)
        config = KeyConfig(3, KEM_X25519, rfc9180.public_key(private), (CHACHA,))
        enc_request, _ = encapsulate_request(config, CHACHA, b"to the equipment")
        info = message.Header(3, KEM_X25519, CHACHA).info(message.REQUEST_LABEL)
        receiver = rfc9180.setup_base_receiver(enc_request[7:39], private, info, rfc9180.AEAD)
        self.assertEqual(receiver.open(b"", enc_request[39:]), b"to the equipment")
