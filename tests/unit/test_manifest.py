"""Manifest loading and validation (SPEC 2, 5): Ring compatibility, every error at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ringjobs.config import JobDefaults, Policy
from ringjobs.exceptions import PayloadTooLarge, ValidationFailed
from ringjobs.manifest import (
    MAX_MANIFEST_BYTES,
    LoadedManifests,
    ManifestSource,
    load_manifests,
)
from ringjobs.models import (
    HistoryLimit,
    JobSpec,
    LiveSource,
    NamespaceSpec,
    Resources,
    SecretRef,
    Violation,
    VolumeMount,
)

RING_JOB = """
deployments:
  app:
    name: app
    namespace: prod
    runtime: docker
    kind: job
    image: "alpine:3"
    replicas: 1
    command: ["sh", "-c", "echo hello"]
    environment:
      LOG_LEVEL: debug
      DATABASE_PASSWORD:
        secretRef: db-password
    labels:
      - "a=b"
    volumes:
      - type: volume
        source: data
        destination: /data
        driver: local
        permission: ro
    config:
      user: "1000"
      image_pull_policy: Never
    resources:
      limits:
        cpu: "500m"
        memory: "512Mi"
"""


def load(
    *sources: str | tuple[str, str],
    policy: Policy | None = None,
    defaults: JobDefaults | None = None,
    skip_workers: bool = False,
) -> LoadedManifests:
    manifests = [
        ManifestSource(*s) if isinstance(s, tuple) else ManifestSource("jobs.yaml", s)
        for s in sources
    ]
    return load_manifests(
        manifests, policy or Policy(), defaults or JobDefaults(), skip_workers=skip_workers
    )


def job(entry: str, **kwargs: Any) -> JobSpec:
    """Load one deployment given as a YAML flow mapping body."""
    loaded = load(f"deployments: {{j: {{name: j, {entry}}}}}", **kwargs)
    assert len(loaded.jobs) == 1
    return loaded.jobs[0]


def errors(*sources: str | tuple[str, str], **kwargs: Any) -> list[Violation]:
    with pytest.raises(ValidationFailed) as info:
        load(*sources, **kwargs)
    return info.value.violations


def job_errors(entry: str, **kwargs: Any) -> dict[str, Violation]:
    """Violations of one deployment keyed by their path below the entry."""
    found = errors(f"deployments: {{j: {{name: j, {entry}}}}}", **kwargs)
    prefix = "deployments.j."
    return {v.path.removeprefix(prefix): v for v in found}


def only(entry: str, **kwargs: Any) -> Violation:
    found = job_errors(entry, **kwargs)
    assert len(found) == 1, found
    return next(iter(found.values()))


# --- Ring compatibility and defaults -------------------------------------------------


def test_ring_job_manifest_applies_unchanged() -> None:
    loaded = load(RING_JOB)
    assert loaded.warnings == []
    assert loaded.namespaces == []
    assert loaded.jobs == [
        JobSpec(
            namespace="prod",
            name="app",
            image="alpine:3",
            command=["sh", "-c", "echo hello"],
            environment={
                "LOG_LEVEL": "debug",
                "DATABASE_PASSWORD": SecretRef.model_validate({"secretRef": "db-password"}),
            },
            labels={"a": "b"},
            volumes=[
                VolumeMount(type="volume", source="data", destination="/data", read_only=True)
            ],
            user="1000",
            image_pull_policy="Never",
            resources=Resources(cpu_limit_nanos=500_000_000, memory_limit_bytes=512 * 2**20),
            timeout_seconds=24 * 3600,
            stop_grace_period_seconds=10,
        )
    ]


def test_minimal_job_gets_defaults() -> None:
    spec = job("image: alpine")
    assert spec.namespace == "default"
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.timeout_seconds == 24 * 3600
    assert spec.stop_grace_period_seconds == 10
    assert spec.command is None
    assert spec.network == "namespace"
    assert spec.time_zone == "UTC"
    assert spec.concurrency_policy == "Forbid"


def test_defaults_come_from_daemon_config() -> None:
    defaults = JobDefaults(timeout="30m", stop_grace_period="1m")
    spec = job("image: alpine", defaults=defaults)
    assert spec.timeout_seconds == 1800
    assert spec.stop_grace_period_seconds == 60


def test_timeout_none_means_no_deadline() -> None:
    assert job("image: alpine, timeout: none").timeout_seconds is None


def test_timeout_zero_in_config_means_no_deadline() -> None:
    assert job("image: alpine", defaults=JobDefaults(timeout="0s")).timeout_seconds is None


def test_every_extension_field() -> None:
    spec = job(
        "from: {compose: {project: shop, service: web}, mounts: true}, "
        "shell: true, command: 'echo $$HOME && ls', working_dir: /app, timeout: 1h30m, "
        "stop_grace_period: 30, backoff_limit: 3, restart_policy: OnFailure, "
        "parallelism: 2, completions: 4, concurrency_policy: Queue, "
        "schedule: '*/15 9-17 * JAN-MAR mon-fri', time_zone: Europe/Paris, "
        "starting_deadline: 5m, suspend: true, history_limit: {succeeded: 3, failed: 0}, "
        "keep_container: 10m, network: source, read_only_rootfs: true, "
        "tmpfs: {/tmp: 'size=64m', /run: null}"
    )
    assert spec.image is None
    assert spec.source == LiveSource(compose_project="shop", compose_service="web", mounts=True)
    assert spec.shell is True
    assert spec.command == ["echo $$HOME && ls"]
    assert spec.working_dir == "/app"
    assert spec.timeout_seconds == 5400
    assert spec.stop_grace_period_seconds == 30
    assert (spec.backoff_limit, spec.restart_policy) == (3, "OnFailure")
    assert (spec.parallelism, spec.completions, spec.concurrency_policy) == (2, 4, "Queue")
    assert spec.schedule == "*/15 9-17 * JAN-MAR mon-fri"
    assert spec.time_zone == "Europe/Paris"
    assert spec.starting_deadline_seconds == 300
    assert spec.suspend is True
    assert spec.history_limit == HistoryLimit(succeeded=3, failed=0)
    assert spec.keep_container_seconds == 600
    assert spec.network == "source"
    assert spec.read_only_rootfs is True
    assert spec.tmpfs == {"/tmp": "size=64m", "/run": ""}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{container: app-web-1}", LiveSource(container="app-web-1")),
        ("{label: 'com.example.role=web'}", LiveSource(label="com.example.role=web")),
    ],
)
def test_live_sources(source: str, expected: LiveSource) -> None:
    assert job(f"from: {source}").source == expected


def test_image_and_a_source_together_are_refused() -> None:
    violation = only("from: {container: web}, image: 'app:2'")
    assert violation.path == "deployments.j.image"
    assert violation.code == "invalid_value"
    assert violation.message == (
        "give either image or from, not both "
        "(from takes the source container's image, pinned by ID)"
    )


def test_a_source_container_name_may_have_docker_s_leading_slash() -> None:
    assert job("from: {container: /shop_web.1-a}").source == LiveSource(container="shop_web.1-a")


@pytest.mark.parametrize(
    "name",
    ["nosuch/../../containers/app", "../app", "app?x=1", "app web", "-app", ".app", "app%2F.."],
)
def test_a_source_container_name_must_be_a_docker_name(name: str) -> None:
    violation = only(f"from: {{container: {json.dumps(name)}}}")
    assert violation.path == "deployments.j.from.container"
    assert violation.code == "invalid_value"
    assert violation.message.startswith(f'invalid container name "{name}" (Docker names are ')


def test_environment_scalars_become_strings() -> None:
    spec = job("image: x, environment: {A: 1, B: 2.5, C: true, D: false, E: '', F: yes}")
    assert spec.environment == {
        "A": "1",
        "B": "2.5",
        "C": "true",
        "D": "false",
        "E": "",
        "F": "true",
    }


def test_volume_strings_and_labels_map() -> None:
    spec = job(
        "image: x, volumes: ['cache:/cache', 'data:/data:ro', '/srv/in:/in:rw'], "
        "labels: {team: data, 'com.example/x': '1'}",
        policy=Policy(allowed_bind_paths=["/srv"]),
    )
    assert spec.volumes == [
        VolumeMount(type="volume", source="cache", destination="/cache"),
        VolumeMount(type="volume", source="data", destination="/data", read_only=True),
        VolumeMount(type="bind", source="/srv/in", destination="/in"),
    ]
    assert spec.labels == {"team": "data", "com.example/x": "1"}


def test_resources_requests_and_plain_numbers() -> None:
    spec = job(
        "image: x, resources: {limits: {cpu: 2, memory: 1G}, requests: {cpu: 0.5, memory: 1048576}}"
    )
    assert spec.resources == Resources(
        cpu_limit_nanos=2 * 10**9,
        memory_limit_bytes=10**9,
        cpu_request_nanos=5 * 10**8,
        memory_request_bytes=2**20,
    )


def test_capabilities_are_normalised() -> None:
    policy = Policy(allowed_capabilities=["CAP_NET_ADMIN", "chown"])
    spec = job("image: x, cap_add: [net_admin, CAP_CHOWN, NET_ADMIN]", policy=policy)
    assert spec.cap_add == ["NET_ADMIN", "CHOWN"]


def test_relaxations_allowed_by_policy() -> None:
    policy = Policy(
        allow_privileged=True, allow_host_network=True, allow_host_pid=True, allow_host_ipc=True
    )
    spec = job("image: x, privileged: true, network: host, pid: host, ipc: host", policy=policy)
    assert spec.privileged is True
    assert (spec.network, spec.pid_mode, spec.ipc_mode) == ("host", "host", "host")


@pytest.mark.parametrize("macro", ["@daily", "@HOURLY", "@annually"])
def test_schedule_macros(macro: str) -> None:
    assert job(f"image: x, schedule: '{macro}'").schedule == macro.lower()


def test_null_optional_fields_count_as_absent() -> None:
    spec = job("image: x, command: null, timeout: null, labels: null")
    assert spec.command is None
    assert spec.timeout_seconds == 24 * 3600


def test_namespaces() -> None:
    loaded = load(
        """
namespaces:
  production:
    name: production
    environment: {APP_ENV: prod, TOKEN: {secretRef: api-token}, PORT: 8080}
    network: none
  ci: {}
  staging:
"""
    )
    assert loaded.namespaces == [
        NamespaceSpec(
            name="production",
            environment={
                "APP_ENV": "prod",
                "TOKEN": SecretRef.model_validate({"secretRef": "api-token"}),
                "PORT": "8080",
            },
            network="none",
        ),
        NamespaceSpec(name="ci"),
        NamespaceSpec(name="staging"),
    ]


def test_multi_document_and_several_sources() -> None:
    loaded = load(
        "deployments: {a: {name: a, image: x}}\n---\n---\n"
        "deployments: {b: {name: b, image: x}}\nnamespaces: {ns: {}}\n",
        ("more.yml", "deployments: {c: {name: a, namespace: other, image: x}}"),
    )
    assert [j.key for j in loaded.jobs] == ["default/a", "default/b", "other/a"]
    assert [n.name for n in loaded.namespaces] == ["ns"]


def test_json_source() -> None:
    document = {"deployments": {"migrate": {"name": "migrate", "image": "app:1", "replicas": 1}}}
    loaded = load(("jobs.json", json.dumps(document)))
    assert [j.key for j in loaded.jobs] == ["default/migrate"]


def test_empty_sources_load_nothing() -> None:
    loaded = load("", "# only a comment\n", "---\n")
    assert (loaded.jobs, loaded.namespaces, loaded.warnings) == ([], [], [])


def test_worker_is_skipped_with_a_warning_when_asked() -> None:
    loaded = load(
        "deployments: {web: {name: web, kind: worker, image: nginx, replicas: 3, ports: [80]},"
        " job: {name: job, image: x}}",
        skip_workers=True,
    )
    assert [j.name for j in loaded.jobs] == ["job"]
    assert len(loaded.warnings) == 1
    assert "deployments.web" in loaded.warnings[0]
    assert "worker" in loaded.warnings[0]


# --- invalid manifests -----------------------------------------------------------------


def test_invalid_yaml_reports_line_and_column() -> None:
    [violation] = errors("deployments:\n  a:\n    name: a\n   image: x: y\n")
    assert violation.code == "invalid_yaml"
    assert violation.path == ""
    assert violation.source == "jobs.yaml"
    assert violation.message.startswith("invalid YAML at line 4, column ")


def test_invalid_yaml_mapping_values_message() -> None:
    [violation] = errors("a: b: c\n")
    assert violation.message.startswith(
        "invalid YAML at line 1, column 5: mapping values are not allowed"
    )


def test_duplicate_yaml_key_is_an_error() -> None:
    [violation] = errors("deployments:\n  a:\n    name: a\n    image: x\n    image: y\n")
    assert violation.code == "invalid_yaml"
    assert violation.message == 'invalid YAML at line 5, column 5: duplicate key "image"'


def test_invalid_json_reports_line_and_column() -> None:
    [violation] = errors(("jobs.json", '{\n  "deployments": {,}\n}'))
    assert violation.code == "invalid_yaml"
    assert violation.message.startswith("invalid JSON at line 2, column 19: ")


def test_unknown_field_with_hint() -> None:
    violation = only("imagee: x, image: x")
    assert violation.path == "deployments.j.imagee"
    assert violation.code == "unknown_field"
    assert violation.message == 'unknown field "imagee" (did you mean "image"?)'


def test_unknown_field_without_close_match_has_no_hint() -> None:
    assert only("image: x, zzzzzz: 1").message == 'unknown field "zzzzzz"'


@pytest.mark.parametrize(
    ("entry", "path", "hint"),
    [
        ("config: {image_pul_policy: Never}", "config.image_pul_policy", "image_pull_policy"),
        ("resources: {limit: {cpu: 1}}", "resources.limit", "limits"),
        ("resources: {limits: {memmory: 1Gi}}", "resources.limits.memmory", "memory"),
        (
            "volumes: [{type: volume, source: v, destination: /v, permision: ro}]",
            "volumes.0.permision",
            "permission",
        ),
        ("history_limit: {succeded: 1}", "history_limit.succeded", "succeeded"),
        ("from: {container: a, mount: true}", "from.mount", "mounts"),
        ("environment: {A: {secretref: x}}", "environment.A.secretref", "secretRef"),
    ],
)
def test_unknown_nested_fields(entry: str, path: str, hint: str) -> None:
    found = job_errors(f"image: x, {entry}")
    assert found[path].code == "unknown_field"
    assert found[path].message.endswith(f'(did you mean "{hint}"?)')


def test_unknown_top_level_field() -> None:
    [violation] = errors("deployment: {a: {name: a, image: x}}")
    assert (violation.path, violation.code) == ("deployment", "unknown_field")
    assert violation.message == 'unknown field "deployment" (did you mean "deployments"?)'


def test_bad_quantity_exact_message() -> None:
    violation = only("image: x, resources: {limits: {memory: 5GB}}")
    assert violation.path == "deployments.j.resources.limits.memory"
    assert violation.message == 'invalid quantity "5GB" (use 512Mi, 4Gi, ...)'
    assert violation.code == "invalid_value"
    assert violation.render() == (
        "jobs.yaml: deployments.j.resources.limits.memory: "
        'invalid quantity "5GB" (use 512Mi, 4Gi, ...)'
    )


def test_missing_image() -> None:
    violation = only("command: [x]")
    assert (violation.path, violation.code) == ("deployments.j.image", "required")
    assert violation.message == 'required field (give an image, or a "from" source)'


def test_missing_name() -> None:
    [violation] = errors("deployments: {j: {image: x}}")
    assert (violation.path, violation.code) == ("deployments.j.name", "required")


@pytest.mark.parametrize("name", ["App", "-app", "app-", "a_b", "a.b", "", "a" * 64, "élan"])
def test_bad_names(name: str) -> None:
    found = errors(f"deployments: {{j: {{name: '{name}', image: x}}}}")
    assert [(v.path, v.code) for v in found] == [("deployments.j.name", "invalid_value")]
    assert "lowercase letters, digits and '-'" in found[0].message


def test_bad_namespace_name() -> None:
    violation = only("image: x, namespace: Prod")
    assert (violation.path, violation.code) == ("deployments.j.namespace", "invalid_value")


def test_worker_without_skip_workers() -> None:
    [violation] = errors("deployments: {web: {name: web, kind: worker, image: nginx, ports: [80]}}")
    assert (violation.path, violation.code) == ("deployments.web.kind", "not_supported")
    assert "only runs jobs" in violation.message
    assert "--skip-workers" in violation.message


def test_unknown_kind() -> None:
    violation = only("image: x, kind: cronjob")
    assert (violation.path, violation.code) == ("deployments.j.kind", "invalid_value")


def test_replicas_must_be_one() -> None:
    violation = only("image: x, replicas: 2")
    assert (violation.path, violation.code) == ("deployments.j.replicas", "invalid_value")
    assert "parallelism" in violation.message


def test_other_runtime_is_not_supported() -> None:
    violation = only("image: x, runtime: podman")
    assert (violation.path, violation.code) == ("deployments.j.runtime", "not_supported")
    assert violation.message == 'runtime "podman" is not supported; ringjobs runs runtime: docker'


@pytest.mark.parametrize(
    ("entry", "path", "fragment"),
    [
        ("image: 5", "image", 'must be a string, not a number (quote it: "5")'),
        ("image: true", "image", "must be a string, not a boolean"),
        ("image: [a]", "image", "must be a string, not a list"),
        ("image: {a: b}", "image", "must be a string, not a mapping"),
        ("image: x, namespace: 5", "namespace", "must be a string"),
        ("image: x, command: [ls, 5]", "command.1", "must be a string"),
        ("image: x, command: 'ls -l'", "command", "shell: true"),
        ("image: x, command: {a: b}", "command", "must be a list of strings"),
        ("image: x, environment: [A=b]", "environment", "must be a mapping"),
        ("image: x, labels: 5", "labels", "must be a mapping, or a list"),
        ("image: x, labels: {a: 5}", "labels.a", "must be a string"),
        ("image: x, volumes: {a: b}", "volumes", "must be a list"),
        ("image: x, volumes: [5]", "volumes.0", "must be a"),
        ("image: x, resources: [1]", "resources", "must be a mapping"),
        (
            "image: x, resources: {limits: {cpu: true}}",
            "resources.limits.cpu",
            "must be a quantity",
        ),
        ("image: x, config: {user: 1000}", "config.user", '(quote it: "1000")'),
        ("image: x, shell: 'yes'", "shell", "must be true or false, not a string"),
        ("image: x, suspend: 1", "suspend", "must be true or false"),
        ("image: x, backoff_limit: '3'", "backoff_limit", "must be a whole number"),
        ("image: x, backoff_limit: 1.5", "backoff_limit", "must be a whole number"),
        ("image: x, parallelism: true", "parallelism", "must be a whole number"),
        ("image: x, timeout: [1]", "timeout", "must be a duration"),
        ("image: x, timeout: true", "timeout", "must be a duration"),
        ("image: x, history_limit: 3", "history_limit", "must be a mapping"),
        ("image: x, cap_add: NET_ADMIN", "cap_add", "must be a list of strings"),
        ("image: x, tmpfs: /tmp", "tmpfs", "must be a mapping of path"),
        ("image: x, from: web", "from", "must be a mapping"),
        ("image: x, schedule: 5", "schedule", "must be a string"),
    ],
)
def test_wrong_types(entry: str, path: str, fragment: str) -> None:
    found = job_errors(entry)
    assert path in found, found
    assert fragment in found[path].message
    assert found[path].code == "invalid_type"


@pytest.mark.parametrize(
    ("entry", "path", "fragment"),
    [
        ("timeout: 5x", "timeout", 'invalid duration "5x" (use 30s, 10m, 1h30m, ...)'),
        ("timeout: 0", "timeout", "must be longer than 0"),
        ("timeout: -5", "timeout", "must not be negative"),
        ("keep_container: 99999d", "keep_container", "too long"),
        ("backoff_limit: -1", "backoff_limit", "must be at least 0"),
        ("completions: 0", "completions", "must be at least 1"),
        ("parallelism: 99999999999999", "parallelism", "too large"),
        (
            "restart_policy: Always",
            "restart_policy",
            'invalid value "Always" (use Never | OnFailure)',
        ),
        ("restart_policy: never", "restart_policy", '(did you mean "Never"?)'),
        ("concurrency_policy: forbid", "concurrency_policy", '(did you mean "Forbid"?)'),
        ("config: {image_pull_policy: always}", "config.image_pull_policy", '"Always"'),
        ("working_dir: app", "working_dir", "must be an absolute path"),
        ("schedule: '* * * *'", "schedule", "expected 5 fields"),
        ("schedule: '60 * * * *'", "schedule", 'minute value "60" is out of range (0-59)'),
        ("schedule: '* * * FOO *'", "schedule", 'month value "FOO"'),
        ("schedule: '*/0 * * * *'", "schedule", "step 0"),
        ("schedule: '* * ? * *'", "schedule", "bad day-of-month field"),
        ("schedule: '@reboot'", "schedule", "unknown macro"),
        ("time_zone: Mars/Olympus", "time_zone", 'unknown time zone "Mars/Olympus"'),
        ("time_zone: ../../etc/passwd", "time_zone", "unknown time zone"),
        ("network: bridge", "network", "use namespace | none | source | host"),
        ("network: source", "network", '"from" source'),
        ("pid: container", "pid", 'invalid value "container" (use host)'),
        ("environment: {1A: x}", "environment.1A", "invalid variable name"),
        ("environment: {A: null}", "environment.A", "not null"),
        ("environment: {A: {secretRef: ''}}", "environment.A.secretRef", "must not be empty"),
        ("labels: [novalue]", "labels.0", "use key=value"),
        ("labels: ['io.ringjobs.run=1']", "labels.0", "reserved"),
        ("labels: {io.ringjobs.managed: 'false'}", "labels.io.ringjobs.managed", "reserved"),
        ("volumes: ['a:b:c:d']", "volumes.0", "use SOURCE:DESTINATION"),
        ("volumes: ['data:/d:rx']", "volumes.0", 'invalid mode "rx"'),
        ("volumes: ['data:rel']", "volumes.0", "must be an absolute path"),
        ("volumes: ['./rel:/d']", "volumes.0", "invalid volume name"),
        ("volumes: ['data:/']", "volumes.0", 'cannot mount over "/"'),
        (
            "volumes: ['a1:/d', 'b1:/d']",
            "volumes.1",
            'destination "/d" is already used by volumes.0',
        ),
        (
            "volumes: [{type: bind, source: rel, destination: /d}]",
            "volumes.0.source",
            "absolute path",
        ),
        ("volumes: [{source: v, destination: /d}]", "volumes.0.type", "required field"),
        ("resources: {limits: {cpu: 2x}}", "resources.limits.cpu", 'invalid cpu "2x"'),
        ("resources: {limits: {memory: 0}}", "resources.limits.memory", "must be positive"),
        (
            "resources: {limits: {memory: 1Mi}, requests: {memory: 1Gi}}",
            "resources.requests.memory",
            "larger than the memory limit",
        ),
        (
            "resources: {limits: {cpu: 1}, requests: {cpu: 2}}",
            "resources.requests.cpu",
            "larger than the cpu limit",
        ),
        ("from: {container: a, label: b=c}", "from", "exactly one of container, compose or label"),
        ("from: {mounts: true}", "from", "exactly one of"),
        ("from: {label: novalue}", "from.label", "use key=value"),
        ("from: {compose: {project: p}}", "from.compose.service", "required field"),
        ("cap_add: ['net admin']", "cap_add.0", "invalid capability"),
    ],
)
def test_invalid_values(entry: str, path: str, fragment: str) -> None:
    found = job_errors(f"image: x, {entry}")
    assert path in found, found
    assert fragment in found[path].message


@pytest.mark.parametrize(
    ("entry", "path", "code"),
    [
        (
            "volumes: [{type: config, source: c, destination: /c}]",
            "volumes.0.type",
            "not_supported",
        ),
        (
            "volumes: [{type: volume, source: c, destination: /c, driver: nfs}]",
            "volumes.0.driver",
            "not_supported",
        ),
        ("shell: true", "command", "required"),
        ("shell: true, command: [a, b]", "command", "invalid_type"),
        ("command: []", "command", "invalid_value"),
    ],
)
def test_codes(entry: str, path: str, code: str) -> None:
    found = job_errors(f"image: x, {entry}")
    assert found[path].code == code


def test_namespace_errors() -> None:
    found = errors(
        "namespaces: {Bad: {}, ok: {name: Also_Bad, network: host, environment: {A: null}, x: 1}}"
    )
    assert {(v.path, v.code) for v in found} == {
        ("namespaces.Bad", "invalid_value"),
        ("namespaces.ok.name", "invalid_value"),
        ("namespaces.ok.network", "invalid_value"),
        ("namespaces.ok.environment.A", "invalid_value"),
        ("namespaces.ok.x", "unknown_field"),
    }


def test_duplicate_job_across_sources_names_both_places() -> None:
    found = errors(
        ("a.yaml", "deployments: {migrate: {name: migrate, namespace: prod, image: x}}"),
        ("b.yaml", "deployments: {again: {name: migrate, namespace: prod, image: y}}"),
    )
    [violation] = found
    assert (violation.source, violation.path, violation.code) == (
        "b.yaml",
        "deployments.again",
        "duplicate",
    )
    assert "prod/migrate" in violation.message
    assert "a.yaml: deployments.migrate" in violation.message
    assert "b.yaml: deployments.again" in violation.message


def test_duplicate_job_across_documents() -> None:
    [violation] = errors(
        "deployments: {a: {name: a, image: x}}\n---\ndeployments: {b: {name: a, image: x}}"
    )
    assert violation.code == "duplicate"
    assert "(document 1): deployments.a" in violation.message
    assert "(document 2): deployments.b" in violation.message


def test_duplicate_namespace() -> None:
    [violation] = errors("namespaces: {prod: {}, production: {name: prod}}")
    assert (violation.path, violation.code) == ("namespaces.production", "duplicate")


def test_same_name_in_other_namespace_is_not_a_duplicate() -> None:
    loaded = load("deployments: {a: {name: a, image: x}, b: {name: a, namespace: ci, image: x}}")
    assert len(loaded.jobs) == 2


def test_all_errors_of_all_sources_are_reported_together() -> None:
    found = errors(
        ("one.yaml", "deployments:\n  migrate:\n    name: migrate\n    imagee: x\n"),
        ("two.yaml", "a: [\n"),
        ("three.json", '{"deployments": {"b": {"name": "B", "image": "x", "replicas": 2}}}'),
        ("four.yaml", "deployments: {c: {name: c, image: x, resources: {limits: {memory: 5GB}}}}"),
        ("five.yaml", "deployments: {ok: {name: ok, image: x}}"),
    )
    assert [(v.source, v.path, v.code) for v in found] == [
        ("one.yaml", "deployments.migrate.imagee", "unknown_field"),
        ("one.yaml", "deployments.migrate.image", "required"),
        ("two.yaml", "", "invalid_yaml"),
        ("three.json", "deployments.b.name", "invalid_value"),
        ("three.json", "deployments.b.replicas", "invalid_value"),
        ("four.yaml", "deployments.c.resources.limits.memory", "invalid_value"),
    ]


def test_apply_is_all_or_nothing() -> None:
    with pytest.raises(ValidationFailed) as info:
        load("deployments: {good: {name: good, image: x}, bad: {name: bad}}")
    assert len(info.value.violations) == 1
    assert "deployments.bad.image" in str(info.value)


# --- policy ------------------------------------------------------------------------------


def test_bind_mount_refused_when_no_path_is_allowed() -> None:
    violation = only("image: x, volumes: ['/etc:/host-etc:ro']")
    assert (violation.path, violation.code) == ("deployments.j.volumes.0", "policy_forbidden")
    assert violation.message == (
        'bind mount source "/etc" is outside the allowed paths (policy.allowed_bind_paths is '
        "empty); add a parent directory to policy.allowed_bind_paths in the daemon config"
    )


def test_bind_mount_under_an_allowed_path(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    policy = Policy(allowed_bind_paths=[str(tmp_path)])
    spec = job(
        f"image: x, volumes: [{{type: bind, source: '{tmp_path}/data', destination: /d}}, "
        f"'{tmp_path}:/all']",
        policy=policy,
    )
    assert [v.source for v in spec.volumes] == [f"{tmp_path}/data", str(tmp_path)]


def test_bind_mount_dotdot_escape_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret").mkdir()
    policy = Policy(allowed_bind_paths=[str(allowed)])
    violation = only(f"image: x, volumes: ['{allowed}/../secret:/s']", policy=policy)
    assert violation.code == "policy_forbidden"
    assert f'resolves to "{tmp_path}/secret"' in violation.message
    assert f"policy.allowed_bind_paths: {allowed}" in violation.message


def test_bind_mount_symlink_escape_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    policy = Policy(allowed_bind_paths=[str(allowed)])
    violation = only(f"image: x, volumes: ['{allowed}/link:/s']", policy=policy)
    assert violation.code == "policy_forbidden"
    assert 'resolves to "/etc"' in violation.message


def test_sibling_with_common_prefix_is_not_under_allowed_path(tmp_path: Path) -> None:
    policy = Policy(allowed_bind_paths=[f"{tmp_path}/data"])
    violation = only(f"image: x, volumes: ['{tmp_path}/database:/d']", policy=policy)
    assert violation.code == "policy_forbidden"


@pytest.mark.parametrize("source", ["/var/run/docker.sock", "/run/docker.sock", "/var/run"])
def test_docker_socket_needs_its_own_policy_key(source: str) -> None:
    policy = Policy(allowed_bind_paths=["/"])
    violation = only(f"image: x, volumes: ['{source}:/var/run/docker.sock']", policy=policy)
    assert violation.code == "policy_forbidden"
    assert "Docker socket" in violation.message
    assert "policy.allow_docker_socket" in violation.message
    allowed = policy.model_copy(update={"allow_docker_socket": True})
    assert job(f"image: x, volumes: ['{source}:/s']", policy=allowed).volumes[0].type == "bind"


def test_docker_socket_under_an_allowed_path_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / "docker.sock").touch()
    policy = Policy(allowed_bind_paths=[str(tmp_path)])
    violation = only(f"image: x, volumes: ['{tmp_path}/docker.sock:/s']", policy=policy)
    assert "policy.allow_docker_socket" in violation.message


@pytest.mark.parametrize(
    ("entry", "path", "key"),
    [
        ("privileged: true", "privileged", "policy.allow_privileged"),
        ("network: host", "network", "policy.allow_host_network"),
        ("pid: host", "pid", "policy.allow_host_pid"),
        ("ipc: host", "ipc", "policy.allow_host_ipc"),
        ("cap_add: [NET_ADMIN]", "cap_add.0", "policy.allowed_capabilities"),
    ],
)
def test_policy_refusals_name_their_key(entry: str, path: str, key: str) -> None:
    violation = only(f"image: x, {entry}")
    assert violation.path == f"deployments.j.{path}"
    assert violation.code == "policy_forbidden"
    assert key in violation.message
    assert "daemon config" in violation.message


def test_capability_not_in_allowed_list() -> None:
    policy = Policy(allowed_capabilities=["CHOWN"])
    violation = only("image: x, cap_add: [CHOWN, SYS_ADMIN]", policy=policy)
    assert violation.path == "deployments.j.cap_add.1"
    assert 'capability "SYS_ADMIN" is not allowed (policy.allowed_capabilities: CHOWN)' in (
        violation.message
    )


def test_privileged_false_needs_no_policy() -> None:
    assert job("image: x, privileged: false").privileged is False


# --- size and robustness ---------------------------------------------------------------


def test_oversized_manifest_is_refused() -> None:
    content = "# " + "x" * MAX_MANIFEST_BYTES + "\n"
    with pytest.raises(PayloadTooLarge) as info:
        load(("big.yaml", content))
    message = str(info.value)
    assert "big.yaml" in message
    assert str(len(content)) in message
    assert "1 MiB" in message
    assert "split" in message


def test_size_counts_utf8_bytes() -> None:
    content = "# " + "é" * (MAX_MANIFEST_BYTES // 2) + "\n"
    assert len(content) < MAX_MANIFEST_BYTES
    with pytest.raises(PayloadTooLarge):
        load(content)


def test_exactly_the_limit_is_accepted() -> None:
    content = "#" * (MAX_MANIFEST_BYTES - 1) + "\n"
    assert load(content).jobs == []


JUNK = [
    "- a\n- b\n",
    "just a string",
    "42",
    "true",
    "[[[[[[[]]]]]]]",
    "deployments: [a, b]",
    "deployments: {a: null, b: 5, c: [1], d: {}}",
    "deployments: {a: {name: null, image: null, volumes: [null, [null], {type: null}]}}",
    "deployments: {a: {name: a, image: x, environment: {A: {B: {C: null}}}}}",
    "namespaces: [1, 2]",
    "namespaces: {a: 5, b: [x], c: {environment: null, network: 5}}",
    "deployments: {a: {name: a, image: x, timeout: 99999999999999999999999999999999}}",
    "deployments: {a: {name: a, image: x, environment: {H: 0x" + "f" * 5000 + "}}}",
    "deployments: {a: {name: a, image: x, backoff_limit: " + "9" * 5000 + "}}",
    "deployments: {a: {name: a, image: x, resources: {limits: {memory: " + "9" * 400 + "}}}}",
    "deployments: {a: {name: a, image: x, cpu: .inf, timeout: .nan, stop_grace_period: .inf}}",
    "deployments: {a: {name: a, image: !!binary aGVsbG8=, labels: !!set {a}, timeout: 2001-12-14}}",
    "deployments: {a: {name: a, image: x, command: &c [*c]}}",
    "deployments: {a: &e {name: a, image: x, x: *e}}",
    "{? [a] : b}",
    "!!python/object/apply:os.system [ls]",
    "a: !custom x",
    "\x00",
    '"\\ud800": 1',
    "deployments: {1: {name: 2, image: 3}, null: {}, true: [], 1.5: x}",
    "deployments: {a: {name: a, image: x, volumes: ['/\\0x:/y']}}",
    "[" * 3000 + "]" * 3000,
    "deployments: {a: {name: a, image: x, environment: {A: [1, 2], B: 1e400}}}",
]


@pytest.mark.parametrize("content", JUNK)
def test_junk_gives_validation_failed_and_nothing_else(content: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        load(content)
    for violation in info.value.violations:
        violation.model_dump_json()  # every message must be serialisable for the API


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '"text"',
        "3",
        '{"deployments": {"a": {"name": "a", "image": NaN}}}',
        "[" * 100000,
        '"\\ud800"',
    ],
)
def test_junk_json(content: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        load(("junk.json", content))
    for violation in info.value.violations:
        violation.model_dump_json()


def test_violations_are_capped_for_pathological_input() -> None:
    entries = ", ".join(f"e{i}: {{name: e{i}}}" for i in range(2000))
    found = errors(f"deployments: {{{entries}}}")
    assert len(found) == 1001
    assert "too many problems" in found[-1].message


def test_backoff_limit_alone_retries_on_failure_and_never_contradicts_it() -> None:
    from ringjobs.config import JobDefaults, Policy
    from ringjobs.exceptions import ValidationFailed
    from ringjobs.manifest import ManifestSource, load_manifests

    def load(extra: str) -> object:
        text = f"deployments:\n  j:\n    name: j\n    image: i\n{extra}"
        return load_manifests([ManifestSource("m.yaml", text)], Policy(), JobDefaults())

    loaded = load("    backoff_limit: 2\n")
    assert loaded.jobs[0].restart_policy == "OnFailure"  # type: ignore[attr-defined]
    with pytest.raises(ValidationFailed) as error:
        load("    backoff_limit: 2\n    restart_policy: Never\n")
    assert error.value.violations[0].path == "deployments.j.restart_policy"
