"""`ringjobs daemon`: read the config, then load the daemon's stack for it.

The config comes first because it decides what the stack needs. asyncio imports `ssl`
when it is itself imported, which loads OpenSSL's libssl and sets it up: about 4 MiB of
an idle daemon's RSS (issue 7: under 60 MB). ringjobs speaks TLS only to a Docker engine
reached over https (tcp:// with DOCKER_TLS_VERIFY or DOCKER_CERT_PATH); its own API is
a unix socket. For any other engine `import ssl` is refused before asyncio is loaded:
asyncio, aiohttp and docker-py (for pulls) have paths for a Python built without ssl,
and take them. prometheus_client has none (it imports ssl for its push and https
server paths): the first /metrics scrape lifts the refusal (`allow_ssl`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ringjobs.config import Config, load_config
from ringjobs.exceptions import ConfigError
from ringjobs.runtime.dockerenv import engine_address

_HTTPS_WITH_SSL_ONLY = ("http.client", "urllib.request")


def run_daemon(config_path: Path | None, socket_path: Path | None, database: Path | None) -> int:
    """Entry point of `ringjobs daemon`; returns the process exit code."""
    try:
        config = load_config(config_path, {"socket": socket_path, "database": database})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if "ssl" not in sys.modules and not speaks_tls(config):
        sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl: ImportError
    from ringjobs.daemon import serve

    return serve(config)


def allow_ssl() -> None:
    """Let `import ssl` load it after all, for a library that cannot import without it.

    What was imported meanwhile keeps its no-ssl paths, and the stdlib modules that
    define their https parts only with ssl (http.client, urllib.request: aiohttp imports
    them at start) leave sys.modules, so that the next import gets them whole; the
    modules that imported them keep the copies they hold."""
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
        for name in _HTTPS_WITH_SSL_ONLY:
            sys.modules.pop(name, None)


def speaks_tls(config: Config) -> bool:
    """Whether the daemon's Docker engine is reached over TLS (or may be: an address
    that does not parse is reported by the daemon, which then needs all it may use)."""
    try:
        return engine_address(config.docker_host, os.environ).tls is not None
    except ConfigError:
        return True
