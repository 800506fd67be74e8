"""
Oblivious HTTP (RFC 9458), sans-IO: the core of protocol v2, fed bytes, doing no I/O.

- keyconfig: key configurations and `application/ohttp-keys` (RFC 9458 section 3)
- message: Encapsulated Requests and Responses (RFC 9458 section 4)
- chunked: chunked requests and responses (draft-ietf-ohai-chunked-ohttp-08)
- bhttp: known-length Binary HTTP messages (RFC 9292), the plaintext of both
- bhttp_stream: indeterminate-length Binary HTTP responses, written and read as they stream
- suites, wire, errors: the algorithms allowed, byte reading, the one error family
"""
