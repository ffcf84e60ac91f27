"""The per-user cache directory of kernelstack (tuned triton tables, lowered pallas kernels)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(name: str, xdg: str | None = None, home: str | None = None) -> Path:
    """``<platform cache root>/kernelstack/<name>``: ``$XDG_CACHE_HOME`` (an absolute path), else
    ``$HOME/.cache`` on Linux; ``~/Library/Caches`` on macOS; ``%LOCALAPPDATA%/kernelstack/Cache``
    on Windows. ``xdg`` / ``home`` stand for those variables (callers pass what they read)."""
    if sys.platform == "darwin":
        base = Path("~/Library/Caches").expanduser()
    elif sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path("~/AppData/Local").expanduser()) / "kernelstack" / "Cache" / name
    else:
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(home or "~").expanduser() / ".cache"
    return base / "kernelstack" / name
