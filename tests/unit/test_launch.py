"""`ringjobs daemon` loads OpenSSL only for an engine reached over TLS (issue 7: idle RSS).

Each case runs ringjobs.launch in a fresh interpreter, with a stand-in for the daemon's
stack that imports asyncio and aiohttp as the real one does and says whether they got
`ssl`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringjobs.config import load_config
from ringjobs.launch import speaks_tls

# A stand-in for the daemon's stack: `serve` (each test's own) says what it saw.
_SEES_SSL = """\
def serve(config):
    import aiohttp.client_reqrep, aiohttp.web, asyncio.base_events
    seen = {"asyncio": asyncio.base_events.ssl is not None,
            "aiohttp": aiohttp.client_reqrep.ssl is not None,
            "pyOpenSSL": sys.modules.get("OpenSSL", "") is not None}
    print(json.dumps(seen))
    return 7
"""
_LAUNCH = """\
import json, sys, types
from pathlib import Path
{serve}
stand_in = types.ModuleType("ringjobs.daemon")
stand_in.serve = serve
sys.modules["ringjobs.daemon"] = stand_in
from ringjobs.launch import run_daemon
sys.exit(run_daemon(Path(sys.argv[1]), None, None))
"""
_TLS_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "RINGJOBS_DOCKER_HOST")


def launch(
    tmp_path: Path, config_text: str, serve: str = _SEES_SSL, **environ: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if k not in _TLS_VARIABLES} | environ
    code = _LAUNCH.format(serve=serve)
    return subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    ("docker_host", "environ", "tls"),
    [
        (None, {}, False),  # the local socket
        ("unix:///run/other.sock", {}, False),
        ("tcp://10.0.0.2:2375", {}, False),
        (None, {"DOCKER_HOST": "tcp://10.0.0.2:2375"}, False),
        (None, {"DOCKER_HOST": "tcp://10.0.0.2:2376", "DOCKER_TLS_VERIFY": "1"}, True),
        (None, {"DOCKER_HOST": "tcp://10.0.0.2:2376", "DOCKER_CERT_PATH": "/certs"}, True),
        ("https://10.0.0.2:2376", {}, True),
    ],
)
def test_ssl_is_loaded_only_for_an_engine_reached_over_tls(
    tmp_path: Path, docker_host: str | None, environ: dict[str, str], tls: bool
) -> None:
    done = launch(tmp_path, f"docker_host: {json.dumps(docker_host)}\n", **environ)

    assert done.returncode == 7, done.stderr
    assert json.loads(done.stdout) == {"asyncio": tls, "aiohttp": tls, "pyOpenSSL": tls}


def test_an_engine_address_that_does_not_parse_keeps_ssl_for_the_daemon_to_report() -> None:
    config = load_config(None, {"docker_host": "ftp://nowhere"}, environ={})

    assert speaks_tls(config)


def test_a_bad_config_is_reported_before_anything_is_loaded(tmp_path: Path) -> None:
    done = launch(tmp_path, "logs: {flush_bytes: lots}\n")

    assert done.returncode == 1
    assert done.stdout == ""  # the stand-in daemon never ran
    assert done.stderr.startswith("error: ") and "flush_bytes" in done.stderr


def test_a_metrics_scrape_can_still_import_prometheus_client_which_needs_ssl(
    tmp_path: Path,
) -> None:
    scrape = """\
def serve(config):
    import asyncio.base_events
    import ringjobs.api.app, ringjobs.engine.engine, ringjobs.runtime.docker  # the stack
    from ringjobs.sslgate import allow_ssl
    allow_ssl()
    import prometheus_client.exposition
    print(json.dumps({"asyncio": asyncio.base_events.ssl is not None,
                      "prometheus": prometheus_client.exposition.ssl is not None}))
    return 7
"""
    done = launch(tmp_path, "{}\n", serve=scrape)

    assert done.returncode == 7, done.stderr
    assert json.loads(done.stdout) == {"asyncio": False, "prometheus": True}
