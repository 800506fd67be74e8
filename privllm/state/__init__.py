"""The admission state router processes share: in this process's memory (one process) or in Redis (many)."""
