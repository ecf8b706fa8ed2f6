"""Helpers shared by several test files (importable as ``support.*``: pytest puts ``tests/`` on sys.path)."""
