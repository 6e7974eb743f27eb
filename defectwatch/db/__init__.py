"""The SQLite/PostgreSQL record (schema, queue, registry). Filled in by the daemon issue."""
