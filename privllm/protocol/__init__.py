"""
Protocol v1, sans-IO: plain objects fed bytes and time, no sockets, no reactor.

See docs/protocol.md for the normative description.
"""
