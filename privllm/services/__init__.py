"""The parts of the service tree tap.py assembles: the router, an inference node, the parent
of router workers, and their listeners."""
