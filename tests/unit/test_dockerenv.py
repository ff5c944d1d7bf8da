"""The engine address, TLS and config.json proxies are what docker-py made of them."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.utils import parse_host

from ringjobs.exceptions import ConfigError
from ringjobs.runtime.dockerenv import (
    TLSFiles,
    docker_config,
    engine_address,
    engine_url,
    proxy_environment,
)

HOSTS = [
    "",
    "unix://",
    "unix:///var/run/docker.sock",
    "unix://var/run/docker.sock",
    "http+unix:///tmp/d.sock",
    "tcp://127.0.0.1:2375",
    "tcp://:2375",
    "tcp://Docker.Example:2376",
    "tcp://docker.example:2375/prefix/",
    "tcp://[::1]:2375",
    "http://h:2375",
    "https://h:2376",
    "127.0.0.1:2375",
    "  tcp://h:2375  ",
]
BAD_HOSTS = [
    "h:2375",
    "tcp://h",
    "tcp://",
    "tcp://h:0",
    "tcp://h:port",
    "tcp://h:2375?x=1",
    "tcp://h:2375#x",
    "tcp://u:pw@h:2375",
    "fd://",
    "ftp://h:21",
]


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("host", HOSTS)
def test_engine_url_is_docker_pys_parse_host(host: str, tls: bool) -> None:
    assert engine_url(host, tls) == parse_host(host, tls=tls)


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_an_address_docker_py_refuses_is_a_config_error(host: str) -> None:
    with pytest.raises((docker.errors.DockerException, ValueError)):
        parse_host(host)
    with pytest.raises(ConfigError, match="invalid Docker engine address"):
        engine_url(host)


def test_ssh_and_windows_pipes_are_refused_with_what_to_do_instead() -> None:
    with pytest.raises(ConfigError, match="ssh -L"):
        engine_url("ssh://me@example.com")
    with pytest.raises(ConfigError, match="unix:///path or tcp://host:port"):
        engine_url("npipe:////./pipe/docker_engine")  # docker-py refuses it off Windows


def requests_tls(tls: TLSFiles | None) -> tuple[Any, Any]:
    """(verify, cert) as docker-py's TLSConfig sets them on its requests session."""
    if tls is None:
        return True, None  # requests' defaults
    return (tls.ca_cert if tls.verify and tls.ca_cert else tls.verify), tls.client_cert


@pytest.fixture
def certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """~/.docker with the three files (HOME is moved here): both look there by default."""
    path = tmp_path / "home" / ".docker"
    path.mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (path / name).write_text("not a real certificate\n")
    monkeypatch.setenv("HOME", str(path.parent))
    return path


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"DOCKER_HOST": "tcp://127.0.0.1:2375"},
        {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1"},
        {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": ""},
        {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "", "CERT": ""},
        {"DOCKER_HOST": "https://127.0.0.1:2376", "CERT": ""},
        {"DOCKER_HOST": "http://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1"},
        {"DOCKER_HOST": "unix:///tmp/x.sock", "DOCKER_TLS_VERIFY": "1"},
    ],
    ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "empty",
)
def test_engine_address_from_the_environment_is_docker_pys(
    environ: dict[str, str], certs: Path
) -> None:
    env = {
        ("DOCKER_CERT_PATH" if key == "CERT" else key): (str(certs) if key == "CERT" else value)
        for key, value in environ.items()
    }
    address = engine_address(None, env)
    client = docker.from_env(version="1.41", environment=env)
    if address.url.startswith("http+unix://"):
        assert address.url == parse_host(env.get("DOCKER_HOST"))
    else:
        assert address.url == client.api.base_url
    if address.url.startswith("https://"):  # the only scheme TLS settings apply to
        assert requests_tls(address.tls) == (client.api.verify, client.api.cert)
    else:
        assert address.tls is None


@pytest.mark.parametrize("host", ["unix:///tmp/d.sock", "tcp://h:2375", "https://h:2376"])
def test_a_configured_docker_host_ignores_the_tls_variables_as_docker_py_did(
    host: str, certs: Path
) -> None:
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs), "DOCKER_HOST": "tcp://x:1"}
    address = engine_address(host, env)
    api = docker.APIClient(base_url=host, version="1.41")
    assert address.host == host
    assert address.url == parse_host(host)
    assert requests_tls(address.tls) == (api.verify, api.cert)


def test_tls_files_that_do_not_load_are_a_config_error(tmp_path: Path) -> None:
    missing = TLSFiles(True, str(tmp_path / "ca.pem"), None)
    with pytest.raises(ConfigError, match="DOCKER_CERT_PATH"):
        missing.context()


PROXIES = {
    "default": {"httpProxy": "http://proxy:3128", "noProxy": "localhost,.internal"},
    "tcp://special:2375": {
        "httpProxy": "http://a:1",
        "httpsProxy": "http://b:2",
        "ftpProxy": "ftp://c:3",
        "noProxy": "*.local",
    },
    "unix:///var/run/docker.sock": {"httpsProxy": "http://sock-proxy:8080"},
}


@pytest.mark.parametrize(
    ("proxies", "host"),
    [
        (PROXIES, "tcp://special:2375"),
        (PROXIES, "tcp://other:2375"),
        (PROXIES, "unix:///var/run/docker.sock"),
        ({"default": {}}, "tcp://other:2375"),
        ({"tcp://special:2375": {"httpProxy": "http://a:1"}}, "tcp://other:2375"),
        (None, "unix:///var/run/docker.sock"),
    ],
)
@pytest.mark.parametrize("own", [[], ["X=1", "http_proxy=http://mine:1"]])
def test_proxy_environment_is_what_docker_py_injects(
    proxies: dict[str, Any] | None,
    host: str,
    own: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = {"auths": {}} if proxies is None else {"auths": {}, "proxies": proxies}
    (tmp_path / "config.json").write_text(json.dumps(settings))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    ours = proxy_environment(docker_config({"DOCKER_CONFIG": str(tmp_path)}), host)
    api = docker.APIClient(base_url=host, version="1.41")
    assert ((ours + own) or None) == (api._proxy_configs.inject_proxy_environment(own) or None)


def test_docker_config_is_found_where_docker_py_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / ".docker").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert docker_config({}) == {}
    (home / ".dockercfg").write_text('{"legacy": 1}')
    assert docker_config({}) == {"legacy": 1}
    (home / ".docker" / "config.json").write_text('{"home": 1}')
    assert docker_config({}) == {"home": 1}
    assert docker_config({"DOCKER_CONFIG": str(elsewhere)}) == {"home": 1}  # no file there
    (elsewhere / "config.json").write_text('{"elsewhere": 1}')
    assert docker_config({"DOCKER_CONFIG": str(elsewhere)}) == {"elsewhere": 1}
    (elsewhere / "config.json").write_text("not json")
    assert docker_config({"DOCKER_CONFIG": str(elsewhere)}) == {}


def test_tls_without_verify_checks_nothing_and_with_verify_checks_the_host() -> None:
    loose, strict = TLSFiles(verify=False).context(), TLSFiles(verify=True).context()
    assert (loose.verify_mode, loose.check_hostname) == (ssl.CERT_NONE, False)
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
