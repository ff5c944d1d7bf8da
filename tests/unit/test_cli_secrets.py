"""`ringjobs secret ...` and `exec --from` against a fake daemon: what is sent, exit codes."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from test_client import Answer, FakeDaemon

from ringjobs import cli

PROBLEM = "application/problem+json"


def ringjobs(daemon: FakeDaemon, *args: str) -> int:
    return cli.main(["--socket", daemon.socket_path, *args])


def _created(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/v1/namespaces/prod/secrets", Answer({"action": "created"}, status=201))


def test_create_reads_stdin_and_drops_one_trailing_newline(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _created(daemon)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"p@ss word\n\n")))

    assert ringjobs(daemon, "secret", "create", "db", "-n", "prod") == 0

    [request] = daemon.requests
    assert request.body == {"name": "db", "value": "p@ss word\n", "overwrite": False}
    out = capsys.readouterr()
    assert out.out == "secret prod/db created\n" and "p@ss" not in out.out + out.err


def test_create_from_a_file_or_the_value_flag(daemon: FakeDaemon, tmp_path: Path) -> None:
    _created(daemon)
    (tmp_path / "v").write_bytes(b"from-file\r\n")

    from_file = ["--from-file", str(tmp_path / "v")]
    assert ringjobs(daemon, "secret", "create", "a", "-n", "prod", *from_file) == 0
    assert ringjobs(daemon, "secret", "create", "b", "-n", "prod", "-v", "flag", "--overwrite") == 0

    assert [r.body["value"] for r in daemon.requests] == ["from-file", "flag"]
    assert daemon.requests[1].body["overwrite"] is True


def test_create_refuses_two_sources_and_unreadable_files(
    daemon: FakeDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = ["-v", "x", "--from-file", str(tmp_path / "v")]
    assert ringjobs(daemon, "secret", "create", "a", "-n", "prod", *both) == 2
    missing = ["--from-file", str(tmp_path / "missing")]
    assert ringjobs(daemon, "secret", "create", "a", "-n", "prod", *missing) == 1
    assert daemon.requests == []
    assert "cannot read" in capsys.readouterr().err


def test_delete_of_a_referenced_secret_is_a_conflict_unless_forced(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    path = "/v1/namespaces/prod/secrets/db"
    problem = {"title": "conflict", "status": 409, "detail": "referenced by job prod/x; --force"}
    daemon.route("DELETE", path, Answer(problem, status=409, content_type=PROBLEM))

    assert ringjobs(daemon, "secret", "delete", "db", "-n", "prod") == 5

    daemon.route("DELETE", path, Answer({"deleted": "prod/db", "referenced_by": ["job prod/x"]}))
    assert ringjobs(daemon, "secret", "delete", "db", "-n", "prod", "--force") == 0
    assert daemon.requests[-1].query == {"force": "1"}
    assert "still referenced by job prod/x" in capsys.readouterr().err


def test_list_shows_names_and_references(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {"namespace": "prod", "name": "db", "updated_at": None, "referenced_by": ["job prod/x"]}
    daemon.route("GET", "/v1/secrets", Answer({"secrets": [row]}))

    assert ringjobs(daemon, "secret", "list", "-n", "prod") == 0

    assert daemon.requests[0].query == {"namespace": "prod"}
    assert capsys.readouterr().out.splitlines()[1].split() == ["prod", "db", "-", "job", "prod/x"]


def test_exec_from_sends_the_selector_and_no_image(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/v1/exec", Answer({"id": 7, "status": "pending"}, status=201))

    assert ringjobs(daemon, "exec", "-n", "prod", "--from", "compose:shop/web", "--", "true") == 0
    assert ringjobs(daemon, "exec", "-n", "prod", "--", "true") == 2

    [request] = daemon.requests
    assert request.body == {"namespace": "prod", "command": ["true"], "from": "compose:shop/web"}
