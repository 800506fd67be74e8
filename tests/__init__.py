"""End-to-end tests: the real daemon (twistd), the real llama-server and model, real TLS and sockets."""
