"""Schedules and retention through the real daemon, CLI and Docker (issue 5)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_cli_daemon import Daemon, manifest

pytestmark = pytest.mark.docker


def poll(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {within}s")


def schedules(daemon: Daemon, namespace: str) -> dict[str, dict[str, Any]]:
    rows = daemon.json("schedule", "list", "-n", namespace)["schedules"]
    return {row["job"]: row for row in rows}


def test_a_schedule_fires_in_the_daemon_and_suspend_resume_stop_and_restart_it(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    jobs = {"tick": {"command": ["sh", "-c", "echo tick"], "schedule": "* * * * *"}}
    jobs["tick"]["time_zone"] = "America/New_York"
    applied = daemon.cli("apply", "-f", str(manifest(tmp_path / "m.json", namespace, jobs)))
    assert applied.returncode == 0, applied.stderr
    assert "schedule" not in applied.stderr  # no "does not fire yet" warning any more
    assert "run " not in applied.stdout  # a scheduled job only registers its schedule

    row = schedules(daemon, namespace)["tick"]
    next_at = datetime.fromisoformat(row["next_run_at"].replace("Z", "+00:00"))
    assert next_at.second == 0 and next_at > datetime.now(UTC) - timedelta(seconds=5)
    assert row["next_run_at_local"].endswith(("-05:00", "-04:00"))
    assert (row["suspended"], row["time_zone"], row["last_run_id"]) == (
        False,
        "America/New_York",
        None,
    )

    def finished_scheduled_run() -> dict[str, Any] | None:
        runs = daemon.json("run", "list", "-n", namespace)["runs"]
        done = [r for r in runs if r["status"] in ("completed", "failed")]
        return done[0] if done else None

    run = poll(finished_scheduled_run, 100, "no scheduled run finished")
    assert (run["trigger"], run["status"]) == ("schedule", "completed")
    assert daemon.cli("logs", str(run["id"])).stdout == "tick\n"
    row = schedules(daemon, namespace)["tick"]
    assert row["last_run_id"] >= run["id"] and row["last_status"] is not None

    assert daemon.cli("job", "suspend", f"{namespace}/tick").returncode == 0
    row = schedules(daemon, namespace)["tick"]
    assert (row["suspended"], row["next_run_at"]) == (True, None)
    assert daemon.json("run", "inspect", str(run["id"]))["id"] == run["id"]  # history kept
    resumed = daemon.cli("job", "resume", f"{namespace}/tick")
    assert resumed.returncode == 0, resumed.stderr
    assert schedules(daemon, namespace)["tick"]["next_run_at"] is not None


def _rewind_jobs(database: Path, namespace: str, years: int) -> None:
    """As if the jobs had been applied `years` ago and the daemon had been down since."""
    then = datetime.now(UTC) - timedelta(days=366 * years)  # no 29 February surprise
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE jobs SET updated_at = ? WHERE namespace = ?",
            (then.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), namespace),
        )


def test_missed_fires_across_a_restart_catch_up_once_within_the_deadline(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    yearly = {"command": ["sh", "-c", "echo caught up"], "schedule": "@yearly"}
    jobs = {
        "within": {**yearly, "starting_deadline": "400d"},
        "beyond": {**yearly, "starting_deadline": "1s"},
    }
    assert (
        daemon.cli("apply", "-f", str(manifest(tmp_path / "m.json", namespace, jobs))).returncode
        == 0
    )
    assert daemon.stop() == 0
    _rewind_jobs(daemon.database, namespace, years=2)  # one or two New Year fires missed
    daemon.start()

    def caught_up() -> list[dict[str, Any]]:
        runs = daemon.json("run", "list", "-n", namespace)["runs"]
        return [r for r in runs if r["status"] == "completed"]

    [run] = poll(caught_up, 60, "no catch-up run")
    assert (run["job"], run["trigger"]) == ("within", "schedule")
    listed = daemon.cli("run", "events", str(run["id"]), "-o", "json").stdout
    events = [json.loads(line) for line in listed.splitlines()]
    notes = [e["message"] for e in events if e["type"] == "scheduled"]
    assert len(notes) == 1 and "catch-up run for" in notes[0]

    fires = daemon.json("schedule", "fires", f"{namespace}/beyond")["fires"]
    assert [f["outcome"] for f in fires] == ["missed"]
    assert "beyond starting_deadline 1s" in fires[0]["message"]
    assert schedules(daemon, namespace)["beyond"]["last_fire"]["outcome"] == "missed"

    # Another restart: the fire was handled, so nothing runs twice.
    assert daemon.stop() == 0
    daemon.start()
    assert (
        daemon.json("schedule", "fires", f"{namespace}/within")["fires"][0]["run_id"] == run["id"]
    )
    assert len(daemon.json("run", "list", "-n", namespace)["runs"]) == 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_daemon_with_a_hundred_schedules_uses_no_measurable_cpu(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    jobs = {
        f"j{i}": {"command": ["true"], "schedule": f"{i % 60} {i % 24} 1 1 *"} for i in range(100)
    }
    assert (
        daemon.cli("apply", "-f", str(manifest(tmp_path / "m.json", namespace, jobs))).returncode
        == 0
    )
    assert len(schedules(daemon, namespace)) == 100
    assert daemon.proc is not None
    time.sleep(1.0)  # let the scheduler load them and go to sleep
    before = _cpu_seconds(daemon.proc.pid)
    time.sleep(5.0)
    used = _cpu_seconds(daemon.proc.pid) - before
    # Busy polling over 100 schedules would cost far more; ticks are 10 ms.
    assert used <= 0.05, f"idle daemon used {used:.2f}s of CPU in 5s"


def test_prune_options_through_the_cli(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    jobs = {"p": {"command": ["echo", "x"], "concurrency_policy": "Allow"}}
    assert (
        daemon.cli(
            "apply", "-f", str(manifest(tmp_path / "m.json", namespace, jobs)), "--wait"
        ).returncode
        == 0
    )
    for _ in range(2):
        assert daemon.cli("job", "run", f"{namespace}/p", "--wait").returncode == 0
    runs = [r["id"] for r in daemon.json("run", "list", "-n", namespace)["runs"]]
    dry = daemon.json("namespace", "prune", namespace, "--keep-last", "1", "--dry-run")
    assert dry["run_ids"] == sorted(runs[1:])
    refused = daemon.cli("namespace", "prune", namespace, "--status", "running")
    assert refused.returncode == 1 and "--all" in refused.stderr
    done = daemon.cli("namespace", "prune", namespace, "--keep-last", "1", "--status", "completed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"removed 2 runs from {namespace}: ")
    assert [r["id"] for r in daemon.json("run", "list", "-n", namespace)["runs"]] == runs[:1]
