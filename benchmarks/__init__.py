"""Measurements that report figures (run by people, and in short form by CI)."""
