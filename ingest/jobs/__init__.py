"""Derived-data jobs run by ``wulian derive``: one module per job defining ``create(settings) -> Job``."""
