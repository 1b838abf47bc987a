"""jupyter_ystore: durable real-time collaboration for Jupyter.

Public names only. Backends are imported on first use, so that a missing optional driver
(asyncpg, y_py) costs nothing until its store is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from jupyter_ystore.errors import (
    YDocNotFound,
    YStoreConnectionError,
    YStoreCorruptError,
    YStoreError,
    YStoreInvalidPath,
    YStoreInvalidUpdate,
    YStoreLockedError,
    YStorePermissionError,
    YStoreVersionError,
)
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo
from jupyter_ystore.stores.memory import MemoryYStore

__version__ = "0.1.0"

_LAZY = {
    "FileYStore": ".stores.file",
    "TempFileYStore": ".stores.file",
    "SQLiteYStore": ".stores.sqlite",
    "PostgresYStore": ".stores.postgres",
    "PostgresFileIdManager": ".server.fileids",
    "OffLoopFileContentsManager": ".server.offloop_contents",
    "YStoreExtension": ".server.app",
}

__all__ = [
    "BaseYStore",
    "DocumentInfo",
    "MemoryYStore",
    "YDocNotFound",
    "YStoreConnectionError",
    "YStoreCorruptError",
    "YStoreError",
    "YStoreInvalidPath",
    "YStoreInvalidUpdate",
    "YStoreLockedError",
    "YStorePermissionError",
    "YStoreVersionError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_ystore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_ystore.server.app import YStoreExtension

    return [{"module": "jupyter_ystore", "app": YStoreExtension}]
