"""
The one place privllm uses a private Twisted name, because Twisted offers no public way.

`HTTPConnectionPool` builds each connection's factory from its private `_factory` class
attribute, and that factory (`_HTTP11ClientFactory`) is noisy: without this, every upstream
connection would log "Starting factory" and "Stopping factory". privllm.test.test_twisted_private
fails loudly if a Twisted upgrade renames or changes either name.
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = ["quiet_pool"]


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


def quiet_pool(pool: HTTPConnectionPool) -> None:
    """No factory start and stop lines for the connections `pool` makes."""
    pool._factory = _QuietFactory
