"""Fixtures shared by the acceptance tests: a real daemon subprocess on a private socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_daemon import Daemon


@pytest.fixture
def daemon(short_tmp: Path, docker_engine: None) -> Iterator[Daemon]:
    d = Daemon(short_tmp)
    d.start()
    yield d
    if d.proc is not None:
        assert d.stop() == 0, d.log.read_text()
