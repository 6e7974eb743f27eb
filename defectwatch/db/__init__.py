"""The SQLite/PostgreSQL record: schema, engine, migrations, job queue, model registry.

Entry points: ``open_database(url) -> Engine`` (migrates to head), ``write_transaction(engine)``
/ ``read_transaction(engine)`` for the service's transactions, ``SqlJobQueue`` for the daemon.
Functions in ``records``, ``registry``, ``queries`` and ``heartbeat`` take ``session=`` and
never commit.
"""

from defectwatch.db.engine import make_engine, read_transaction, write_transaction
from defectwatch.db.migrate import open_database

__all__ = ["make_engine", "open_database", "read_transaction", "write_transaction"]
