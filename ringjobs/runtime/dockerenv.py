"""Where the Docker engine is, and what the docker CLI's settings add to containers.

What docker-py's `from_env()` and client constructor read, read here without importing
it (docker-py with requests and urllib3 is ~7 MB of the daemon's RSS, issue 7): the
`docker_host` setting or DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for a
tcp:// engine, and the `proxies` of the docker CLI's config.json. Unit tests compare
each answer with docker-py's.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import ParseResult, urlparse, urlunparse

from ringjobs.exceptions import ConfigError

if TYPE_CHECKING:
    import ssl  # loaded by context() only: see ringjobs/sslgate.py

DEFAULT_HOST = "unix:///var/run/docker.sock"
_DEFAULT_TCP_HOST = "127.0.0.1"
_SCHEME_CHARS = frozenset(string.ascii_letters + "+")
# config.json key -> environment variable, in the order docker-py writes them.
_PROXY_VARIABLES = (
    ("httpProxy", "http_proxy"),
    ("httpsProxy", "https_proxy"),
    ("ftpProxy", "ftp_proxy"),
    ("noProxy", "no_proxy"),
)


@dataclass(frozen=True)
class TLSFiles:
    """TLS to a tcp:// engine, as docker-py's TLSConfig: verify against `ca_cert` (or the
    system's CAs), or not at all; present `client_cert` (certificate, key) if set."""

    verify: bool
    ca_cert: str | None = None
    client_cert: tuple[str, str] | None = None

    def context(self) -> ssl.SSLContext:
        import ssl

        try:
            tls = ssl.create_default_context(cafile=self.ca_cert if self.verify else None)
            if not self.verify:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
            if self.client_cert:
                tls.load_cert_chain(*self.client_cert)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load the TLS files for the Docker engine ({exc}); check "
                "DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
            ) from None
        return tls


@dataclass(frozen=True)
class EngineAddress:
    """The engine to talk to: `host` as given (the key of config.json's proxies), `url`
    as docker-py's `parse_host` makes it (http+unix:///path or http[s]://host:port)."""

    host: str
    url: str
    tls: TLSFiles | None


def engine_address(docker_host: str | None, environ: Mapping[str, str]) -> EngineAddress:
    """The configured `docker_host`, else DOCKER_HOST with its TLS variables, else the
    local socket (what `docker.DockerClient(base_url=...)` / `docker.from_env()` chose)."""
    if docker_host:
        host, tls = docker_host, None  # as DockerClient(base_url=...): no TLS variables
    else:
        host, tls = environ.get("DOCKER_HOST") or DEFAULT_HOST, _tls_from_env(environ)
    url = engine_url(host, tls=tls is not None)
    if not url.startswith("https://"):
        return EngineAddress(host, url, None)
    return EngineAddress(host, url, tls or TLSFiles(verify=True))


def _tls_from_env(environ: Mapping[str, str]) -> TLSFiles | None:
    cert_path = environ.get("DOCKER_CERT_PATH") or None  # empty means unset
    verify = environ.get("DOCKER_TLS_VERIFY") not in (None, "")  # any value but "" is on
    if not cert_path and not verify:
        return None
    cert_path = cert_path or os.path.join(os.path.expanduser("~"), ".docker")
    cert, key, ca = (os.path.join(cert_path, name) for name in ("cert.pem", "key.pem", "ca.pem"))
    return TLSFiles(verify, ca, (cert, key))


def engine_url(host: str, tls: bool = False) -> str:
    """docker-py's `parse_host` for the schemes ringjobs speaks; ConfigError otherwise."""
    host = host.strip()
    parsed = urlparse(host if host not in ("", "unix://") else DEFAULT_HOST)
    scheme = parsed.scheme
    if not scheme or not set(scheme) <= _SCHEME_CHARS:
        parsed, scheme = urlparse(f"//{host}", "tcp"), "tcp"
    if scheme in ("http", "https"):
        scheme, tls = "tcp", scheme == "https"
    elif scheme == "http+unix":
        scheme = "unix"
    if scheme == "ssh":
        raise ConfigError(
            "docker_host ssh:// is not supported; use unix:// or tcp:// (for a remote "
            "engine, forward its socket with ssh -L)"
        )
    if scheme not in ("tcp", "unix") or any(
        (parsed.params, parsed.query, parsed.fragment, parsed.password)
    ):
        raise _bad_host(host)
    if scheme == "tcp":
        return _tcp_url(host, parsed, tls)
    # unix://path is read as unix:///path (docker-py does so for legacy reasons).
    path = parsed.path if parsed.hostname is None else f"{parsed.hostname}/{parsed.path}"
    return f"http+unix://{path}".rstrip("/")


def _tcp_url(host: str, parsed: ParseResult, tls: bool) -> str:
    try:
        port = parsed.port or 0
    except ValueError:  # not a number, or out of range
        port = 0
    if not parsed.netloc or port <= 0:
        raise _bad_host(host, "a port is required, e.g. tcp://127.0.0.1:2375")
    netloc = parsed.netloc if parsed.hostname else f"{_DEFAULT_TCP_HOST}:{port}"
    return urlunparse(("https" if tls else "http", netloc, parsed.path, "", "", "")).rstrip("/")


def _bad_host(host: str, why: str = "use unix:///path or tcp://host:port") -> ConfigError:
    return ConfigError(f"invalid Docker engine address {host!r} (docker_host, DOCKER_HOST): {why}")


def docker_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """The docker CLI's config.json, found where docker-py looks: $DOCKER_CONFIG, then
    ~/.docker, then the legacy ~/.dockercfg. {} if there is none or it is not JSON."""
    home = os.path.expanduser("~")
    candidates = [
        os.path.join(environ["DOCKER_CONFIG"], "config.json")
        if environ.get("DOCKER_CONFIG")
        else "",
        os.path.join(home, ".docker", "config.json"),
        os.path.join(home, ".dockercfg"),
    ]
    path = next((p for p in candidates if p and os.path.exists(p)), None)
    if path is None:
        return {}
    try:
        with open(path) as file:
            data = json.load(file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def proxy_environment(config: Mapping[str, Any], host: str) -> list[str]:
    """NAME=value of the proxies config.json sets for `host` (else its "default").

    docker-py put these before a container's own variables, so the container's own win
    (the engine keeps the last of two equal names): kept exactly, a unit test compares.
    """
    proxies = config.get("proxies")
    if not isinstance(proxies, dict):
        return []
    chosen = proxies[host] if host in proxies else proxies.get("default")
    if not isinstance(chosen, dict):
        return []
    environment = []
    for key, name in _PROXY_VARIABLES:
        if value := chosen.get(key):
            environment += [f"{name}={value}", f"{name.upper()}={value}"]
    return environment
