"""What the device probe scripts record: a time's share of the measured copy bandwidth, and one JSON file of
result rows (with the device, its copy bandwidth and the command that made them).

The scripts run as ``python benchmarks/<script>.py``, so this module is imported from beside them."""

from __future__ import annotations

import json
import sys

import torch


def copy_bandwidth(device) -> float:
    """The device's copy bandwidth in GB/s (``lora.compare.timing.copy_bandwidth``, quick), printed with its name."""
    from lora.compare import timing

    gbps = timing.copy_bandwidth(device, quick=True)["gbps"]
    print(f"device {torch.cuda.get_device_name()}  copy bandwidth {gbps:.0f} GB/s", flush=True)
    return gbps


def pct_of_copy(nbytes: int, us: float, copy_gbps: float) -> float:
    """``nbytes`` moved in ``us`` microseconds, as a percentage of ``copy_gbps``."""
    return 100 * nbytes / (us * 1e-6) / 1e9 / copy_gbps


def write_rows(path: str, copy_gbps: float, rows: list, **extra) -> None:
    """``rows`` as JSON at ``path``: the device's name, ``copy_gbps``, the rows, ``extra`` and the command."""
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps, "rows": rows, **extra,
                   "command": " ".join(sys.argv)}, f, indent=1)
