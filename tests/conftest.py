"""Shared fixtures: the real Docker engine, the test image, unique namespaces, cleanup.

Tests that need Docker fail (they do not skip) when no engine answers: a suite that
silently skips its Docker tests would pass while proving nothing. Set
RINGJOBS_SKIP_DOCKER_TESTS=1 to skip them on purpose.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE = "ringjobs-test:latest"
NAMESPACE_PREFIX = "rjt-"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RINGJOBS_SKIP_DOCKER_TESTS") != "1":
        return
    skip = pytest.mark.skip(reason="RINGJOBS_SKIP_DOCKER_TESTS=1")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine that answers and has the test image; cleans up test leftovers."""
    info = _docker("info", "--format", "{{.ServerVersion}}", check=False)
    if info.returncode != 0:
        pytest.fail(
            "these tests need a running Docker engine (start dockerd, or run `bash .ci/run`); "
            f"docker info said: {info.stderr.strip()}"
        )
    if _docker("image", "inspect", TEST_IMAGE, check=False).returncode != 0:
        subprocess.run(["bash", str(REPO / "scripts" / "build-test-image.sh")], check=True)
    yield
    for name in sorted(_CREATED):  # only this session's: other runs may share the engine
        remove_test_leftovers(name)


_CREATED: set[str] = set()


def remove_test_leftovers(namespace: str | None = None) -> None:
    """Remove containers and networks of test namespaces (by label), never anything else."""
    rows = _docker(
        "ps",
        "-a",
        "--filter",
        "label=io.ringjobs.managed=true",
        "--format",
        '{{.ID}} {{.Label "io.ringjobs.namespace"}}',
    ).stdout.split("\n")
    doomed = []
    for row in filter(None, rows):
        container_id, _, ns = row.partition(" ")
        if ns == namespace or (namespace is None and ns.startswith(NAMESPACE_PREFIX)):
            doomed.append(container_id)
    if doomed:
        _docker("rm", "-f", *doomed, check=False)
    names = _docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    pattern = f"ringjobs_{namespace}" if namespace else f"ringjobs_{NAMESPACE_PREFIX}"
    networks = [n for n in names if n == pattern or (namespace is None and n.startswith(pattern))]
    if networks:
        _docker("network", "rm", *networks, check=False)


@pytest.fixture
def namespace(docker_engine: None) -> Iterator[str]:
    """A fresh namespace name; its containers and network are removed afterwards."""
    name = f"{NAMESPACE_PREFIX}{secrets.token_hex(4)}"
    _CREATED.add(name)
    yield name
    remove_test_leftovers(name)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to ~100 bytes)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
