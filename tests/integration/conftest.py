"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_engine_docker import Harness, make_config


@pytest.fixture
async def harness(namespace: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """An engine on a fresh database, with the real store and the real Docker runtime."""
    h = Harness(make_config(tmp_path), namespace)
    await h.start()
    yield h
    await h.stop()
