"""Property: any input gives valid specs or a ValidationFailed with paths, never a crash."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringjobs.config import JobDefaults, Policy
from ringjobs.exceptions import ValidationFailed
from ringjobs.manifest import (
    _JOB_FIELDS,
    ManifestSource,
    apply_overrides,
    exec_spec,
    load_manifests,
)
from ringjobs.models import JobSpec

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
# A lenient policy lets fuzzed values reach the deeper readers behind each policy check.
LENIENT = Policy(
    allowed_bind_paths=["/tmp"],
    allow_privileged=True,
    allowed_capabilities=["NET_ADMIN"],
    allow_host_network=True,
    allowed_devices=["/dev/null"],
    allow_unconfined_seccomp=True,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "job",
            "worker",
            "docker",
            "host",
            "none",
            "512Mi",
            "500m",
            "30s",
            "/tmp/x",
            "/var/run/docker.sock",
            "/dev/null",
            "seccomp=unconfined",
            "a:/b:ro",
            "@daily",
            "*/5 * * * *",
            "Europe/Paris",
            "1000:1000",
            "size=64m",
            "Forbid",
            "",
        ]
    )
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(_JOB_FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
job_entries = st.dictionaries(
    st.sampled_from([*_JOB_FIELDS, "secretRef", "limits", "type", "source", "destination"]),
    values,
    max_size=8,
)
documents = st.fixed_dictionaries(
    {"deployments": st.dictionaries(st.text(max_size=8), job_entries | values, max_size=3)},
    optional={"namespaces": st.dictionaries(st.text(max_size=8), values, max_size=2)},
)


def check(sources: list[ManifestSource], policy: Policy) -> None:
    try:
        loaded = load_manifests(sources, policy, JobDefaults())
    except ValidationFailed as exc:
        assert exc.violations
        for violation in exc.violations:
            assert violation.message and violation.code
            assert violation.path or violation.source
            json.dumps(violation.model_dump())  # shown as problem+json
        return
    for spec in loaded.jobs:
        assert spec.spec_hash()  # a valid model is storable as it is


@FUZZ
@given(st.text(max_size=400), st.sampled_from(["m.yaml", "m.json"]))
def test_any_text(text: str, source: str) -> None:
    check([ManifestSource(source, text)], Policy())


@FUZZ
@given(documents, st.booleans())
def test_structured_documents_as_yaml_and_json(document: dict[str, Any], lenient: bool) -> None:
    policy = LENIENT if lenient else Policy()
    as_json = json.dumps(document, default=str, allow_nan=True)
    check([ManifestSource("m.json", as_json)], policy)
    as_yaml = yaml.safe_dump(document, allow_unicode=True)
    check([ManifestSource("m.yaml", as_yaml)], policy)


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                "deployments:",
                "  a:",
                "    name: a",
                "    image: x",
                "    command: [sh, -c, 'x']",
                "    volumes: ['/tmp:/t']",
                "    tmpfs: {/t: 'size=1m'}",
                "    &anchor",
                "    <<: *anchor",
                "    !!binary aGVsbG8=",
                "    !!python/object:os.system",
                "---",
                "namespaces: {x: {}}",
                "  - [",
                "    timeout: 1e999",
                "    backoff_limit: 99999999999999999999",
                "\t",
                "\x00",
                "\ud800",
            ]
        ),
        max_size=12,
    )
)
def test_yaml_fragments(lines: list[str]) -> None:
    check([ManifestSource("m.yaml", "\n".join(lines))], LENIENT)


exec_bodies = st.dictionaries(
    st.sampled_from(["namespace", "image", "command", "environment", "timeout", "network", "x"]),
    values,
    max_size=6,
)
override_bodies = st.dictionaries(
    st.sampled_from(["command", "env", "timeout", "backoff_limit", "image"]), values, max_size=4
)


@FUZZ
@given(exec_bodies)
def test_exec_requests(body: dict[str, Any]) -> None:
    try:
        spec = exec_spec(body, Policy(), JobDefaults())
    except ValidationFailed as exc:
        assert exc.violations and all(v.path and v.message for v in exc.violations)
    else:
        assert spec.spec_hash()


@FUZZ
@given(override_bodies)
def test_run_overrides(body: dict[str, Any]) -> None:
    base = JobSpec(namespace="ns", name="j", image="x", environment={"A": "1"})
    try:
        spec = apply_overrides(base, body, JobDefaults())
    except ValidationFailed as exc:
        assert exc.violations and all(v.path and v.message for v in exc.violations)
    else:
        assert spec.spec_hash() and spec.image == "x"  # an override never swaps the image
