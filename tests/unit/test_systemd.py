"""The shipped systemd units pass `systemd-analyze verify` without a warning."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ("ringjobs.service", "ringjobs-prune.service", "ringjobs-prune.timer")
INSTALLED_BINARY = "/usr/local/bin/ringjobs"


def _ringjobs_executable() -> str:
    """An existing executable to stand in for the installed one: verify checks ExecStart."""
    venv_script = Path(sys.prefix) / "bin" / "ringjobs"
    if venv_script.is_file():
        return str(venv_script)
    return shutil.which("ringjobs") or "/bin/true"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install it with `apt-get install -y systemd`")
    return path


@pytest.fixture
def unit_copies(tmp_path: Path) -> list[Path]:
    copies = []
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        copy = tmp_path / name
        copy.write_text(text.replace(INSTALLED_BINARY, _ringjobs_executable()))
        copies.append(copy)
    return copies


def test_units_verify_without_warnings(unit_copies: list[Path]) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", *map(str, unit_copies)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # Lines about the machine itself (no systemd as PID 1, other units) are not ours.
    about_our_units = [line for line in output.splitlines() if any(u in line for u in UNITS)]
    assert result.returncode == 0, output
    assert about_our_units == [], output


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD_DIR / name)
    return parser


def test_daemon_unit_runs_the_daemon_after_docker() -> None:
    unit = _unit("ringjobs.service")
    assert unit["Service"]["ExecStart"] == (
        f"{INSTALLED_BINARY} daemon --config /etc/ringjobs/config.yaml"
    )
    assert "docker.service" in unit["Unit"]["Wants"]
    assert "docker.service" in unit["Unit"]["After"]
    assert "Requires" not in unit["Unit"]


def test_prune_timer_prunes_every_namespace_nightly() -> None:
    service = _unit("ringjobs-prune.service")
    timer = _unit("ringjobs-prune.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"] == (
        f"{INSTALLED_BINARY} namespace prune --all-namespaces --older-than 30d"
    )
    assert timer["Timer"]["OnCalendar"] == "*-*-* 03:30:00"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_daemon_unit_limits_and_shares_the_hosts_tmp() -> None:
    service = _unit("ringjobs.service")["Service"]
    assert service["LimitNOFILE"] == "65536"
    # Bind-mount sources are checked by the daemon and mounted by dockerd: one /tmp for both.
    assert "PrivateTmp" not in service
