"""The HTTPS front: Klein routes, TLS options, bounded request bodies, metrics. Thin adapters only."""
