"""Inference backends: llama-server today. Sans-IO stream translation plus thin Twisted adapters."""
