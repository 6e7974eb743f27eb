"""Alembic migrations of the defectwatch schema (run by ``defectwatch.db.migrate``)."""
