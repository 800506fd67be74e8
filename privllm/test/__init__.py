"""Unit tests: sans-IO cores with fake clocks and in-memory transports, no network."""
