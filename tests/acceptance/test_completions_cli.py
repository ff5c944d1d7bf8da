"""parallelism/completions through the real CLI and daemon: wait, logs, inspect."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_daemon import Daemon, manifest

pytestmark = pytest.mark.docker


def test_a_fan_out_waits_for_every_index_and_reports_the_failing_one(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    script = (
        'echo "index $$RINGJOBS_COMPLETION_INDEX"; [ "$$RINGJOBS_COMPLETION_INDEX" != 2 ] || exit 5'
    )
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {"shards": {"command": ["sh", "-c", script], "completions": 3, "parallelism": 3}},
    )
    result = daemon.cli("apply", "-f", str(file), "--wait", "--logs")
    assert result.returncode == 5, result.stderr
    assert sorted(result.stdout.splitlines()[-3:]) == [
        "[0] index 0",
        "[1] index 1",
        "[2] index 2",
    ]
    assert "failed: exit_code (exit code 5): completion 2" in result.stderr
    run_id = daemon.latest_run(namespace)
    run = daemon.json("run", "inspect", run_id)
    completions = sorted(run["completions"], key=lambda c: c["index"])
    assert [(c["index"], c["exit_code"]) for c in completions] == [(0, 0), (1, 0), (2, 5)]
    assert [r["id"] for r in daemon.json("run", "list", "-n", namespace)["runs"]] == [run["id"]]
    logs = daemon.cli("logs", run_id, "--tail", "1")  # the tail of each completion
    assert logs.returncode == 0, logs.stderr
    assert sorted(logs.stdout.splitlines()) == ["[0] index 0", "[1] index 1", "[2] index 2"]
    child = daemon.json("run", "inspect", str(completions[2]["run_id"]))
    assert (child["parent_id"], child["completion_index"]) == (run["id"], 2)


def test_all_indexes_succeeding_exit_zero(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {"ok": {"command": ["sh", "-c", "echo $$RINGJOBS_COMPLETION_INDEX"], "completions": 4}},
    )
    result = daemon.cli("apply", "-f", str(file), "--wait")
    assert result.returncode == 0, result.stderr
    logs = daemon.cli("logs", daemon.latest_run(namespace))
    assert sorted(logs.stdout.splitlines()) == ["[0] 0", "[1] 1", "[2] 2", "[3] 3"]
