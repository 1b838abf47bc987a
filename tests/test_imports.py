"""Every module of the package imports first, on its own, in a fresh interpreter.

An import cycle only shows when a module is imported before the one that completes it (the
awareness relay imported ahead of the rooms failed this way): plugins, the CLI and users'
scripts import whatever they need first.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "jupyter_ystore"


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _import_alone(name: str) -> str | None:
    """Why ``name`` cannot be imported first in a fresh interpreter, or None."""
    process = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        cwd=PACKAGE.parent,
        timeout=120,
    )
    if process.returncode == 0:
        return None
    return (process.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]


def test_every_module_imports_first_on_its_own() -> None:
    modules = _modules()
    assert len(modules) > 40
    with ThreadPoolExecutor(4) as pool:
        reasons = dict(zip(modules, pool.map(_import_alone, modules)))
    failed = {name: reason for name, reason in reasons.items() if reason is not None}
    assert not failed, failed
