"""`jupyter ystore …`: look inside the document store, go back in time, keep it small.

Run ``jupyter ystore --help-all`` for every option. The command reads the server's config
files, so it works on the store the server uses without repeating its settings.
"""

from __future__ import annotations

import sys
from typing import Any

from jupyter_core.application import NoStart

from jupyter_ystore import __version__
from jupyter_ystore.cli.base import CliError, StoreCommand, aliases, flags
from jupyter_ystore.core.content import ContentError
from jupyter_ystore.core.history import HistoryError
from jupyter_ystore.errors import YDocNotFound, YStoreError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("jupyter_ystore.cli.commands.ListApp", "Every document: key, path, updates, bytes, times."),
    "info": ("jupyter_ystore.cli.commands.InfoApp", "One document, its snapshots and newest updates."),
    "history": ("jupyter_ystore.cli.commands.HistoryApp", "The points in time a document can go back to."),
    "export": ("jupyter_ystore.cli.commands.ExportApp", "A document as it was at a time (.ipynb/text/JSON)."),
    "restore": ("jupyter_ystore.cli.commands.RestoreApp", "Make a document be as it was at a time (new update)."),
    "version": ("jupyter_ystore.cli.commands.VersionApp", "Named versions: save, list, restore, delete."),
    "blame": ("jupyter_ystore.cli.commands.BlameApp", "Who last changed each cell and line, and when."),
    "compact": ("jupyter_ystore.cli.commands.CompactApp", "Replace history by a snapshot (DOC or --all)."),
    "verify": ("jupyter_ystore.cli.verify.VerifyApp", "Read every record; report damage and what is recoverable."),
    "delete": ("jupyter_ystore.cli.commands.DeleteApp", "Forget a document (asks first; --yes)."),
    "migrate": ("jupyter_ystore.cli.migrate.MigrateApp", "Copy every document to another store class."),
    "file-ids": ("jupyter_ystore.cli.fileids.FileIdsApp", "File ids in PostgreSQL: import from SQLite, list."),
}


class YStoreApp(StoreCommand):
    """The `jupyter ystore` command: dispatches to its subcommands."""

    name = "jupyter-ystore"
    version = __version__
    description = __doc__
    aliases = aliases
    flags = flags
    subcommands = {name: (cls, help) for name, (cls, help) in SUBCOMMANDS.items()}

    def parse_command_line(self, argv: Any = None) -> None:
        # Accept options before the subcommand too (`jupyter ystore --ystore-class=X list`):
        # traitlets only dispatches when the subcommand comes first.
        argv = list(sys.argv[1:] if argv is None else argv)
        takes_value = {
            "-" * (1 if len(name) == 1 else 2) + name
            for key in self.aliases
            for name in (key if isinstance(key, tuple) else (key,))
        }
        for i, arg in enumerate(argv):
            if arg in self.subcommands and (i == 0 or argv[i - 1] not in takes_value):
                argv = [arg, *argv[:i], *argv[i + 1 :]]
                break
        super().parse_command_line(argv)

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            raise NoStart()
        if self.extra_args:
            raise CliError(
                f"unknown subcommand {self.extra_args[0]!r} (one of: {', '.join(SUBCOMMANDS)})",
                code=2,
            )
        raise CliError(
            f"a subcommand is needed: {', '.join(SUBCOMMANDS)} (jupyter ystore --help)", code=2
        )


def main(argv: Any = None) -> None:
    """Console entry point: one-line errors on stderr, never a traceback for expected ones."""
    code = 0
    app: YStoreApp | None = None
    try:
        app = YStoreApp.instance()
        app.initialize(argv)
        app.start()
    except NoStart:
        pass
    except CliError as exc:
        _error(str(exc))
        code = exc.code
    except (HistoryError, ContentError) as exc:
        _error(str(exc))
        code = 1
    except YDocNotFound as exc:
        _error(f"unknown document {str(exc) or '?'}: nothing is stored for it")
        code = 1
    except (YStoreError, NotImplementedError, OSError) as exc:
        _error(str(exc) or type(exc).__name__)
        code = 1
    except KeyboardInterrupt:
        _error("interrupted")
        code = 130
    finally:
        # Singletons: a second call in the same process (tests) must start afresh.
        if app is not None and app.subapp is not None:
            type(app.subapp).clear_instance()
        YStoreApp.clear_instance()
    if code:
        sys.exit(code)


def _error(message: str) -> None:
    line = " ".join(message.split())
    print(f"jupyter ystore: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
