"""Secrets and live sources through the real CLI and daemon: the values never leak.

A secret value is searched for in every API response, in the CLI's output, in the
daemon's log file and in the raw bytes of the database and its WAL file.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_daemon import IMAGE, Daemon, raw_response

pytestmark = pytest.mark.docker

SOURCE_LABEL = "io.ringjobs.test-source"


@pytest.fixture
def app(namespace: str) -> Iterator[str]:
    """A running 'app' container the test's jobs borrow from; removed afterwards."""
    name = f"{namespace}-app"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--label", f"{SOURCE_LABEL}={namespace}",
         "-e", "APP_MODE=live", "-w", "/srv", IMAGE, "sleep", "3600"],
        capture_output=True, check=True,
    )  # fmt: skip
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def _get(daemon: Daemon, path: str) -> str:
    """A raw GET over the socket: the whole response, headers included."""
    return raw_response(daemon, path).decode(errors="replace")


def _manifest(path: Path, namespace: str, app: str) -> Path:
    document = {
        "namespaces": {
            namespace: {"environment": {"TZ": "UTC", "NS_PW": {"secretRef": "db-password"}}}
        },
        "deployments": {
            "report": {
                "name": "report",
                "namespace": namespace,
                "kind": "job",
                "from": {"container": app},
                "environment": {"PW": {"secretRef": "db-password"}},
                "command": ["sh", "-c", 'printf %s "$$PW" | sha256sum; echo "$$APP_MODE $$TZ"'],
            }
        },
    }
    path.write_text(json.dumps(document))
    return path


def test_secrets_reach_the_container_and_nowhere_else(
    daemon: Daemon, namespace: str, app: str, tmp_path: Path
) -> None:
    value = "s3cr3t-" + secrets.token_hex(12)
    other_value = "other-" + secrets.token_hex(12)
    file_value = "file-" + secrets.token_hex(12)
    outputs: list[str] = []

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = daemon.cli(*args, stdin=stdin)
        outputs.extend([result.stdout, result.stderr])
        return result

    created = cli("secret", "create", "db-password", "-n", namespace, stdin=value + "\n")
    assert created.returncode == 0, created.stderr
    assert cli("secret", "create", "other", "-n", namespace, "-v", other_value).returncode == 0
    (tmp_path / "v.txt").write_text(file_value + "\n")
    from_file = ["--from-file", str(tmp_path / "v.txt")]
    assert cli("secret", "create", "filed", "-n", namespace, *from_file).returncode == 0
    again = cli("secret", "create", "other", "-n", namespace, "-v", "x")
    assert again.returncode == 5 and "--overwrite" in again.stderr

    applied = cli("apply", "-f", str(_manifest(tmp_path / "m.json", namespace, app)), "--wait")
    assert applied.returncode == 0, applied.stderr + daemon.log.read_text()
    run_id = daemon.latest_run(namespace)
    logs = cli("logs", run_id)
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert logs.stdout.splitlines() == [f"{digest}  -", "live UTC"]
    run = daemon.json("run", "inspect", run_id)
    assert run["source"]["container"] == app
    assert run["source"]["environment"]["PW"] == "job (secret db-password)"
    assert run["source"]["environment"]["APP_MODE"] == "source"

    execed = cli("exec", "-n", namespace, "--from", app, "--logs", "--", "sh", "-c", "pwd")
    assert (execed.returncode, execed.stdout) == (0, "/srv\n"), execed.stderr

    listed = daemon.json("secret", "list", "-n", namespace)["secrets"]
    assert [s["name"] for s in listed] == ["db-password", "filed", "other"]
    assert listed[0]["referenced_by"] == [
        f"namespace {namespace} environment",
        f"job {namespace}/report",
    ]
    [ns] = [n for n in daemon.json("namespace", "list")["namespaces"] if n["name"] == namespace]
    assert ns["environment"] == {"TZ": "UTC", "NS_PW": "<secret db-password>"}
    assert ns["secrets"] == 3
    assert "NS_PW=<secret db-password>" in cli("namespace", "list").stdout

    refused = cli("secret", "delete", "db-password", "-n", namespace)
    assert refused.returncode == 5 and "--force" in refused.stderr
    assert cli("secret", "delete", "db-password", "-n", namespace, "--force").returncode == 0
    failed = cli("job", "run", f"{namespace}/report", "--wait")
    assert failed.returncode == 1
    failed_run = daemon.json("run", "inspect", daemon.latest_run(namespace))
    assert (failed_run["status"], failed_run["reason"]) == ("failed", "config_error")
    assert "db-password" in failed_run["message"]

    responses = [
        _get(daemon, path)
        for path in [
            "/v1/runs?limit=1000",
            "/v1/jobs",
            f"/v1/jobs/{namespace}/report",
            "/v1/namespaces",
            "/v1/secrets",
            "/v1/health",
            "/v1/openapi.json",
        ]
    ]
    for listed_run in daemon.json("run", "list", "-n", namespace)["runs"]:
        for suffix in ("", "/events", "/logs", "/wait?timeout=0"):
            responses.append(_get(daemon, f"/v1/runs/{listed_run['id']}{suffix}"))
    database = [p for p in daemon.root.iterdir() if p.name.startswith("rj.db")]
    assert any(p.name == "rj.db-wal" for p in database)  # searched while the daemon runs
    stored = b"".join(p.read_bytes() for p in database)
    key_file = daemon.root / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    for secret in (value, other_value, file_value):
        for text in [*responses, *outputs, daemon.log.read_text()]:
            assert secret not in text
        assert secret.encode() not in stored
        assert secret.encode() not in key_file.read_bytes()
    assert daemon.stop() == 0
    stored = b"".join(p.read_bytes() for p in daemon.root.iterdir() if p.name.startswith("rj.db"))
    for secret in (value, other_value, file_value):
        assert secret.encode() not in stored
        assert secret not in daemon.log.read_text()


def test_bad_requests_are_clear_and_the_routes_are_documented(
    daemon: Daemon, namespace: str
) -> None:
    bad_name = daemon.cli("secret", "create", "no/slash", "-n", namespace, "-v", "x")
    assert bad_name.returncode == 1 and "invalid secret name" in bad_name.stderr
    bad_ns = daemon.cli("secret", "create", "ok", "-n", "Not_A_Label", "-v", "x")
    assert bad_ns.returncode == 1 and "invalid namespace" in bad_ns.stderr
    gone = daemon.cli("secret", "delete", "absent", "-n", namespace)
    assert gone.returncode == 4 and "does not exist" in gone.stderr
    document = json.loads(_get(daemon, "/v1/openapi.json").partition("\r\n\r\n")[2])
    assert {
        "/v1/secrets",
        "/v1/namespaces/{ns}/secrets",
        "/v1/namespaces/{ns}/secrets/{name}",
    } <= set(document["paths"])

    both = daemon.cli("exec", "-n", namespace, "--from", "x", "--image", IMAGE, "--", "true")
    assert both.returncode == 2 and "exactly one of" in both.stderr

    missing = daemon.cli(
        "exec", "-n", namespace, "--from", f"compose:{namespace}/web", "--wait", "--", "true"
    )

    assert missing.returncode == 1
    assert "source_not_found" in missing.stderr
    assert f"compose:{namespace}/web" in missing.stderr
