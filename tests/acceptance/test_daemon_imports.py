"""What a real daemon imports in its whole life (issue 7: idle RSS under 60 MB).

docker-py with requests and urllib3 (~7 MB of RSS) is for pulls only, cryptography
(~6.6 MB) for secrets only: a daemon that runs jobs without either never loads them.
OpenSSL's libssl (~4 MiB) is for a Docker engine reached over TLS only.
The daemon is the real CLI entry point, started by a two-line wrapper that writes
`sys.modules` to a file when the process exits (after SIGTERM, as systemd stops it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_daemon import IMAGE, Daemon, manifest

pytestmark = pytest.mark.docker

HEAVY = ("docker", "requests", "urllib3", "cryptography")
_WRAPPER = """\
import atexit, gc, json, sys
from pathlib import Path
from ringjobs.cli import main
out = Path(sys.argv[-1]).with_name("modules.json")  # next to the --config file
frozen = out.with_name("frozen.json")
atexit.register(lambda: out.write_text(json.dumps(sorted(sys.modules))))
atexit.register(lambda: frozen.write_text(json.dumps(gc.get_freeze_count())))
sys.exit(main())
"""


class ModuleListingDaemon(Daemon):
    """`ringjobs daemon` in a wrapper; `modules()` lists what it had loaded at exit."""

    command = (sys.executable, "-c", _WRAPPER)

    def shared_objects(self) -> str:
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/maps").read_text()

    def modules(self) -> set[str]:
        assert self.stop() == 0, self.log.read_text()
        return set(json.loads((self.root / "modules.json").read_text()))

    def frozen(self) -> int:
        """Objects the garbage collector no longer walks (gc.freeze), at exit."""
        assert self.stop() == 0, self.log.read_text()
        return int(json.loads((self.root / "frozen.json").read_text()))


@pytest.fixture
def listing_daemon(short_tmp: Path, docker_engine: None) -> Iterator[ModuleListingDaemon]:
    d = ModuleListingDaemon(short_tmp)
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_a_daemon_running_jobs_without_secrets_or_pulls_never_loads_them(
    listing_daemon: ModuleListingDaemon, namespace: str, tmp_path: Path
) -> None:
    d = listing_daemon
    script = "echo out; echo err >&2"
    file = manifest(tmp_path / "m.json", namespace, {"hello": {"command": ["sh", "-c", script]}})
    applied = d.cli("apply", "-f", str(file), "--wait")
    assert applied.returncode == 0, applied.stderr
    ran = d.cli("exec", "-n", namespace, "--image", IMAGE, "--wait", "--", "sh", "-c", "echo again")
    assert ran.returncode == 0, ran.stderr
    assert d.cli("secret", "list", "-n", namespace).returncode == 0  # names only: no key use
    assert "_rust.abi3.so" not in d.shared_objects()  # cryptography's native part
    assert "libssl" not in d.shared_objects()  # a unix-socket engine: no TLS (ringjobs/sslgate.py)

    modules = d.modules()

    assert loaded(modules, "ringjobs.runtime.docker") and loaded(modules, "aiohttp")
    assert [p for p in HEAVY if loaded(modules, p)] == []
    assert "_ssl" not in modules


def test_a_secret_and_a_pull_load_them_when_needed(
    listing_daemon: ModuleListingDaemon, namespace: str
) -> None:
    d = listing_daemon
    created = d.cli("secret", "create", "token", "-n", namespace, "-v", "s3cret")
    assert created.returncode == 0, created.stderr
    # A registry nothing listens on: the engine refuses the pull at once, offline.
    d.cli("exec", "-n", namespace, "--image", "127.0.0.1:1/no/image:1", "--wait", "--", "true")
    [run] = d.json("run", "list", "-n", namespace)["runs"]
    assert (run["status"], run["reason"]) == ("failed", "image_not_found"), run

    modules = d.modules()

    assert [p for p in HEAVY if loaded(modules, p)] == list(HEAVY)
    assert "_ssl" not in modules  # docker-py pulls over the unix socket without it


def test_what_start_up_made_is_out_of_the_collectors_way(
    listing_daemon: ModuleListingDaemon,
) -> None:
    # A full collection walked it all: a 77 ms pause of the event loop under load.
    assert listing_daemon.frozen() > 20_000  # 56,000 here (CPython 3.11)
