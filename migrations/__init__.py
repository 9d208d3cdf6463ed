"""Alembic migrations of the storage schema (a package so installs carry them)."""
