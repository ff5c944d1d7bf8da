"""Secret sealing, the daemon key, environment layering and live-source decisions."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from ringjobs.config import JobDefaults, Policy
from ringjobs.engine.prepare import _source_image, layer_environment
from ringjobs.engine.secretvault import secret_refs
from ringjobs.engine.source import SourceMatch, SourceProblem, borrow, source_environment
from ringjobs.exceptions import ConfigError, ValidationFailed
from ringjobs.manifest import ManifestSource, exec_spec, load_manifests, parse_source_selector
from ringjobs.models import LiveSource, SecretRef, VolumeMount
from ringjobs.runtime.base import ContainerSpec, ImageInfo, ImageNotFound, SourceContainer
from ringjobs.secrets import (
    KEY_ENV,
    SecretBox,
    SecretUnreadable,
    load_secret_box,
    secret_name_problem,
    secret_value_problem,
)

# -- sealing --------------------------------------------------------------------------


def test_a_sealed_value_opens_only_with_its_key_and_its_name() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("prod", "db", "hunter2")

    assert b"hunter2" not in sealed.ciphertext
    assert box.open("prod", "db", sealed) == "hunter2"
    assert box.seal("prod", "db", "hunter2").nonce != sealed.nonce  # a fresh nonce each time
    with pytest.raises(SecretUnreadable, match="damaged"):
        box.open("prod", "other", sealed)  # moved to another row: refused
    with pytest.raises(SecretUnreadable, match="another key"):
        SecretBox(os.urandom(32)).open("prod", "db", sealed)


def test_the_box_never_shows_its_key() -> None:
    key = os.urandom(32)
    box = SecretBox(key)

    assert key.hex() not in repr(box) and str(key) not in repr(box)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("db-password", True), ("a", True), ("A.b_c-1", True), ("-x", False), ("", False),
     ("a/b", False), ("x" * 254, False)],
)  # fmt: skip
def test_secret_names(name: str, ok: bool) -> None:
    assert (secret_name_problem(name) is None) is ok


def test_secret_values_must_fit_an_environment_variable() -> None:
    assert secret_value_problem("fine") is None
    assert "NUL" in (secret_value_problem("a\x00b") or "")
    assert "KiB" in (secret_value_problem("x" * 70_000) or "")
    assert secret_value_problem(3) is not None


# -- the daemon key -------------------------------------------------------------------


def test_the_key_file_is_created_0600_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret.key"

    first = load_secret_box(path, environ={})
    second = load_secret_box(path, environ={})

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.key == second.key and len(first.key) == 32


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    load_secret_box(path, environ={})
    path.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret_box(path, environ={})


def test_the_environment_key_wins_and_no_file_is_made(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "secret.key"

    box = load_secret_box(path, environ={KEY_ENV: base64.b64encode(key).decode()})

    assert box.key == key and not path.exists()
    with pytest.raises(ConfigError, match="32 random bytes"):
        load_secret_box(path, environ={KEY_ENV: "too-short"})


# -- environment layers ---------------------------------------------------------------


def test_layers_lowest_to_highest_with_origins() -> None:
    merged, origins = layer_environment(
        [
            ("source", {"A": "src", "B": "src", "C": "src"}),
            ("namespace", {"B": "ns", "C": {"secret_ref": "ns-secret"}}),
            ("job", {"C": SecretRef(secretRef="job-secret"), "D": "job"}),
        ]
    )

    assert merged["A"] == "src" and merged["B"] == "ns" and merged["D"] == "job"
    assert secret_refs(merged) == {"C": "job-secret"}
    assert origins == {
        "A": "source",
        "B": "namespace",
        "C": "job (secret job-secret)",
        "D": "job",
    }


def test_source_environment_keeps_the_first_of_duplicates_and_values_with_equals() -> None:
    container = _container(environment=["A=1", "URL=x=y", "A=2", "BROKEN"])

    assert source_environment(container) == {"A": "1", "URL": "x=y"}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("app", {"container": "app"}),
        ("container:app", {"container": "app"}),
        ("compose:shop/web", {"compose": {"project": "shop", "service": "web"}}),
        ("compose:shop", {"compose": {"project": "shop", "service": None}}),
        ("label:tier=web", {"label": "tier=web"}),
    ],
)
def test_exec_from_selectors(text: str, parsed: dict[str, object]) -> None:
    assert parse_source_selector(text) == parsed


@pytest.mark.parametrize(
    ("body", "path", "start"),
    [
        ({"from": "container:nosuch/../../containers/app"}, "exec.from.container",
         'invalid container name "nosuch/../../containers/app"'),
        ({"from": "../app"}, "exec.from.container", 'invalid container name "../app"'),
        ({"from": "app", "image": "busybox"}, "exec.image", "give either image or from, not both"),
    ],
)  # fmt: skip
def test_exec_refuses_a_path_like_source_name_and_image_with_from(
    body: dict[str, object], path: str, start: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        exec_spec({"namespace": "ns", "command": ["true"], **body}, Policy(), JobDefaults())

    assert info.value.status == 422
    [violation] = info.value.violations
    assert violation.path == path
    assert violation.message.startswith(start)


# -- what a source lends ----------------------------------------------------------------


def _container(**fields: object) -> SourceContainer:
    base: dict[str, object] = {
        "id": "c" * 64,
        "name": "app",
        "image_id": "sha256:" + "1" * 64,
        "image": "app:1",
        "created": "2026-01-01T00:00:00Z",
        "environment": [],
        "working_dir": "/srv",
        "user": "1000",
        "network_mode": "shop_default",
        "networks": ["shop_default", "shop_back"],
        "mounts": [],
    }
    return SourceContainer(**{**base, **fields})  # type: ignore[arg-type]


def _spec(**fields: object) -> ContainerSpec:
    base: dict[str, object] = {"name": "job", "image": "sha256:x", "labels": {}}
    return ContainerSpec(**{**base, "network": "ringjobs_ns", **fields})  # type: ignore[arg-type]


def test_networks_per_choice_and_the_jobs_own_dir_and_user_win() -> None:
    source = LiveSource(container="app")

    lent, _ = borrow(_spec(), _container(), source, Policy(), job_working_dir=None,
                     job_user=None, network_choice="namespace")  # fmt: skip
    only, _ = borrow(_spec(network=None), _container(), source, Policy(), job_working_dir="/x",
                     job_user="0", network_choice="source")  # fmt: skip
    none, _ = borrow(_spec(network="none"), _container(), source, Policy(), job_working_dir=None,
                     job_user=None, network_choice="none")  # fmt: skip

    assert (lent.network, lent.extra_networks) == ("ringjobs_ns", ["shop_default", "shop_back"])
    assert (lent.working_dir, lent.user) == ("/srv", "1000")
    assert (only.network, only.extra_networks, only.working_dir, only.user) == (
        "shop_default", ["shop_back"], "/x", "0"
    )  # fmt: skip
    assert (none.network, none.extra_networks) == ("none", [])


def test_a_host_network_source_is_not_shared_and_says_so() -> None:
    lent, warnings = borrow(
        _spec(), _container(network_mode="host", networks=["host"]), LiveSource(container="app"),
        Policy(), job_working_dir=None, job_user=None, network_choice="namespace",
    )  # fmt: skip

    assert (lent.network, lent.extra_networks) == ("ringjobs_ns", [])
    assert len(warnings) == 1 and "host" in warnings[0]


def test_copied_bind_mounts_obey_the_bind_policy(tmp_path: Path) -> None:
    mounts = [VolumeMount(type="bind", source=str(tmp_path), destination="/data")]
    container = _container(mounts=mounts)
    source = LiveSource(container="app", mounts="rw")
    allowed = Policy(allowed_bind_paths=[str(tmp_path)])

    with pytest.raises(SourceProblem, match=r"policy\.allowed_bind_paths"):
        borrow(_spec(), container, source, Policy(), job_working_dir=None, job_user=None,
               network_choice="namespace")  # fmt: skip
    lent, _ = borrow(_spec(), container, source, allowed, job_working_dir=None, job_user=None,
                     network_choice="namespace")  # fmt: skip
    assert lent.mounts == mounts  # rw keeps the source's own mode


def test_the_docker_socket_of_a_source_is_never_copied_without_its_policy() -> None:
    sock = VolumeMount(type="bind", source="/var/run/docker.sock", destination="/s")
    policy = Policy(allowed_bind_paths=["/var/run"])

    with pytest.raises(SourceProblem, match="allow_docker_socket"):
        borrow(_spec(), _container(mounts=[sock]), LiveSource(container="app", mounts="ro"),
               policy, job_working_dir=None, job_user=None, network_choice="namespace")  # fmt: skip


class _ImagelessRuntime:
    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo:
        assert pull_policy == "Never"  # a source's image is never pulled
        raise ImageNotFound(f"{ref} not here")


async def test_a_source_whose_image_was_removed_is_a_clear_error() -> None:
    match = SourceMatch(_container(), [])

    with pytest.raises(ImageNotFound) as caught:
        await _source_image(_ImagelessRuntime(), match)  # type: ignore[arg-type]

    message = str(caught.value)
    assert "source container app" in message and "no longer on this host" in message
    assert "sha256:" + "1" * 64 in message


def test_namespace_entries_take_job_defaults_and_reject_unknown_ones() -> None:
    text = "namespaces: {prod: {defaults: {memory: 1Gi, cpu: 500m}, network: none}}"
    [ns] = load_manifests([ManifestSource("m", text)], Policy(), JobDefaults()).namespaces

    assert (ns.default_memory_bytes, ns.default_cpu_nanos, ns.network) == (2**30, 5 * 10**8, "none")
    with pytest.raises(ValidationFailed, match=r"namespaces\.prod\.defaults\.timeout"):
        bad = "namespaces: {prod: {defaults: {timeout: 5m}}}"
        load_manifests([ManifestSource("m", bad)], Policy(), JobDefaults())
