"""
Protocol v2, sans-IO: a chat request as Oblivious HTTP (RFC 9458) and its answer as a chunked
Oblivious HTTP response (draft-ietf-ohai-chunked-ohttp-08), both Binary HTTP inside.

- request: the client seals a chat request; the router peeks at it before decryption
  (the key id and `enc`, the replay nonce) and opens it, checking the device proof
- response: the router streams events (v1's chunk objects) as JSON lines; the client reads them
"""
