"""ringjobs: a single-host Docker job runner with SQLite history."""

__version__ = "0.1.0"
