"""Fixtures shared by the unit tests of the client and the CLI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_client import FakeDaemon


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    """A fake ringjobs daemon on a unix socket, answering what each test queues."""
    fake = FakeDaemon()
    fake.start()
    yield fake
    fake.close()
