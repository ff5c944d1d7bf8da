"""Keep OpenSSL's TLS library out of a daemon that never speaks TLS (issue 7: idle RSS).

asyncio imports `ssl` when it is itself imported, which loads OpenSSL's libssl and sets
it up: about 4 MiB of an idle daemon's RSS (target: under 60 MB). ringjobs speaks TLS
only to a Docker engine reached over https; its own API is a unix socket. For any
other engine, ringjobs.launch calls `refuse_ssl` before asyncio is loaded: asyncio,
aiohttp and docker-py (for pulls) have paths for a Python built without ssl, and take
them. prometheus_client has none (it imports ssl for its push and https server
paths): the first /metrics scrape calls `allow_ssl`.

A leaf module: the entry point and the API both use it.
"""

from __future__ import annotations

import sys

# The stdlib modules that define their https parts only if ssl imports (aiohttp imports
# them at start).
_HTTPS_WITH_SSL_ONLY = ("http.client", "urllib.request")


def refuse_ssl() -> None:
    """Make `import ssl` raise ImportError, unless it is loaded already. pyOpenSSL is
    refused for good: requests would otherwise load it (and cryptography) on a pull
    to make up for the missing ssl, where it is installed."""
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
        sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]


def allow_ssl() -> None:
    """Let `import ssl` load it after all, for a library that cannot import without it.

    What was imported meanwhile keeps its no-ssl paths; http.client and urllib.request
    leave sys.modules, so that the next import gets them whole, while the modules that
    imported them keep the copies they hold."""
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
        for name in _HTTPS_WITH_SSL_ONLY:
            sys.modules.pop(name, None)
