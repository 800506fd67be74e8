"""
Inference backends speaking llama-server's API: llama-server on a UNIX socket or an inference
node over mutual TLS. Sans-IO parts (stream translation, the node pool, circuit breakers) and
thin Twisted adapters (the HTTP client, health polling, the dev supervisor); contracts.py says
what a chat needs of a node's client, dialect and translator.
"""
