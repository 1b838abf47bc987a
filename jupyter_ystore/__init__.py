"""jupyter_ystore: durable real-time collaboration for Jupyter."""

from __future__ import annotations

from typing import Any

from .errors import (
    YDocNotFound,
    YStoreConnectionError,
    YStoreCorruptError,
    YStoreError,
    YStoreInvalidPath,
    YStoreLockedError,
    YStorePermissionError,
    YStoreVersionError,
)
from .stores.base import BaseYStore
from .stores.memory import MemoryYStore

__version__ = "0.1.0"

__all__ = [
    "BaseYStore",
    "MemoryYStore",
    "YDocNotFound",
    "YStoreConnectionError",
    "YStoreCorruptError",
    "YStoreError",
    "YStoreInvalidPath",
    "YStoreLockedError",
    "YStorePermissionError",
    "YStoreVersionError",
    "__version__",
]
