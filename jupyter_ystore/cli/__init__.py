"""``jupyter ystore``: operating a store from the command line, one module a concern."""

from jupyter_ystore.cli.main import main

__all__ = ["main"]
