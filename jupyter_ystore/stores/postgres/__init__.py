"""``PostgresYStore``: documents in PostgreSQL, shared live by several servers."""

from jupyter_ystore.stores.postgres.store import PostgresYStore

__all__ = ["PostgresYStore"]
