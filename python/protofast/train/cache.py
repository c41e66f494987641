"""The training job's on-disk cache directory (HAPT data and label-text embeddings)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Return the protofast cache directory (``$PROTOFAST_CACHE`` or ``~/.cache/protofast``).

    Returns:
        The directory path (not created).
    """
    env = os.environ.get("PROTOFAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "protofast"
