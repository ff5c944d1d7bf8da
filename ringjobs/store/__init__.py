"""SQLite persistence. The only package that speaks SQL."""

from ringjobs.store.store import LogRecord, Store, StoredJob

__all__ = ["LogRecord", "Store", "StoredJob"]
