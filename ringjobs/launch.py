"""`ringjobs daemon`: read the config, then load the daemon's stack for it.

The config comes first because it decides what the stack needs: OpenSSL's TLS library
only for a Docker engine reached over https (ringjobs/sslgate.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ringjobs.config import Config, load_config
from ringjobs.exceptions import ConfigError
from ringjobs.runtime.dockerenv import engine_address
from ringjobs.sslgate import refuse_ssl


def run_daemon(config_path: Path | None, socket_path: Path | None, database: Path | None) -> int:
    """Entry point of `ringjobs daemon`; returns the process exit code."""
    try:
        config = load_config(config_path, {"socket": socket_path, "database": database})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if not speaks_tls(config):
        refuse_ssl()
    from ringjobs.daemon import serve

    return serve(config)


def speaks_tls(config: Config) -> bool:
    """Whether the daemon's Docker engine is reached over TLS (or may be: an address
    that does not parse is reported by the daemon, which then needs all it may use)."""
    try:
        return engine_address(config.docker_host, os.environ).tls is not None
    except ConfigError:
        return True
