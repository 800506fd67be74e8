"""The built-in profiles. Only what differs from the schema defaults is written here."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["default_state_dir", "profile"]


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "privllm")


def profile(env: str) -> dict[str, Any]:
    if env == "dev":
        return {
            "env": "dev",
            "keys": {"state_dir": default_state_dir()},
            "llama": {"spawn": True},
            "rate_limit": {
                "per_address_rate": 50.0,
                "per_address_burst": 200,
                "per_device_rate": 20.0,
                "per_device_burst": 100,
            },
        }
    return {
        "env": "prod",
        "process": {"require_mlock": True},
        "server": {"host": "0.0.0.0", "port": 443, "workers": 0},
        "keys": {"state_dir": "/var/lib/privllm"},
        "backend": {"urls": ["unix:///run/privllm/inference.sock"]},
    }
