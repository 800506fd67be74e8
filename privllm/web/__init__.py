"""
The router's HTTPS side, Twisted adapters around privllm.protocol: the Klein routes, one chat
driven by its sans-IO state machine and sealed for its client, bounded in-memory request
bodies and a read deadline, per-address connection caps, the PROXY protocol listener, TLS
options, and metrics. Admission itself is asked of privllm.state.gate; nodes, of privllm.upstream.
"""
