"""What every benchmark shares: the machine's description, percentiles, and the report file."""

from __future__ import annotations

import json
import os
import platform
from typing import Any


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(), "system": platform.platform()}


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in [0, 1]); 0 for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def write_report(report: dict[str, Any], path: str) -> None:
    """Print the figures and keep them in `path` as JSON."""
    text = json.dumps(report, indent=2)
    print(text)
    with open(path, "w") as f:
        f.write(text + "\n")
