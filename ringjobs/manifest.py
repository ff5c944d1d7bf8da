"""Manifest loading: YAML/JSON text to validated JobSpec and NamespaceSpec (SPEC 2, 5).

The format is a superset of the Ring manifest. Every problem in every source is
collected as a Violation with its dotted path, so one apply shows everything to
fix. For any input the only exceptions are PayloadTooLarge (a source over 1 MiB)
and ValidationFailed. Policy refusals name the daemon config key that allows them.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ValidationError

from ringjobs.config import JobDefaults, Policy
from ringjobs.exceptions import PayloadTooLarge, ValidationFailed
from ringjobs.models import (
    EnvValue,
    HistoryLimit,
    JobSpec,
    LiveSource,
    NamespaceSpec,
    Resources,
    SecretRef,
    Violation,
    VolumeMount,
)
from ringjobs.units import format_bytes, parse_cpu, parse_duration, parse_memory

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

MAX_MANIFEST_BYTES = 1024 * 1024
_MAX_VIOLATIONS = 1000
_MAX_ITEMS = 1000
_MAX_INT = 2**31 - 1
_MAX_QUANTITY = 2**62
_MAX_SECONDS = 3650 * 86400.0

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+")
_CAPABILITY = re.compile(r"[A-Z][A-Z0-9_]*")
# A user name or uid, optionally :group or :gid, as `docker run --user` takes it.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?")
# Mount options a tmpfs may have; suid and dev are left out on purpose.
_TMPFS_OPTION = re.compile(
    r"(size=[0-9]+[kmgKMG%]?|mode=[0-7]{3,4}|(uid|gid|nr_inodes|nr_blocks)=[0-9]+[kmgKMG]?"
    r"|ro|rw|exec|noexec|nosuid|nodev)"
)
_DEVICE_PERMISSIONS = re.compile(r"(?!.*(.).*\1)[rwm]{1,3}")
# security_opt relaxations a manifest may ask for, and the policy key allowing each.
_SECURITY_OPTS = {"seccomp": "allow_unconfined_seccomp", "apparmor": "allow_unconfined_apparmor"}
_RESERVED_LABEL_PREFIX = "io.ringjobs."
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")

_TOP_FIELDS = ("deployments", "namespaces")
_RING_FIELDS = (
    "name",
    "namespace",
    "runtime",
    "kind",
    "image",
    "replicas",
    "command",
    "environment",
    "volumes",
    "labels",
    "resources",
    "config",
)
_EXTENSION_FIELDS = (
    "from",
    "shell",
    "working_dir",
    "timeout",
    "stop_grace_period",
    "backoff_limit",
    "restart_policy",
    "parallelism",
    "completions",
    "concurrency_policy",
    "schedule",
    "time_zone",
    "starting_deadline",
    "suspend",
    "history_limit",
    "keep_container",
    "network",
    "read_only_rootfs",
    "tmpfs",
    "privileged",
    "cap_add",
    "pid",
    "ipc",
    "uts",
    "userns_mode",
    "devices",
    "security_opt",
)
_JOB_FIELDS = _RING_FIELDS + _EXTENSION_FIELDS
_NAMESPACE_FIELDS = ("name", "environment", "network", "defaults")
_VOLUME_FIELDS = ("type", "source", "destination", "driver", "permission")
_SOURCE_KINDS = ("container", "compose", "label")
_CONTAINER_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]*")

_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_CRON_ITEM = re.compile(
    r"(\*|([0-9]{1,4}|[A-Za-z]{3})(?:-([0-9]{1,4}|[A-Za-z]{3}))?)(?:/([0-9]{1,4}))?"
)
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {name: i for i, name in enumerate(_MONTHS, start=1)}),
    ("day-of-week", 0, 7, {name: i for i, name in enumerate(_DAYS)}),
)

_OTHER_TYPES = {"bytes": "binary data", "date": "a date", "datetime": "a timestamp"}

_M = TypeVar("_M", bound=BaseModel)
_Reader = Callable[[Any, "_At"], Any]
_Part = Callable[[dict[Any, Any], "_At", "_Context"], dict[str, Any]]


@dataclass(frozen=True)
class ManifestSource:
    """One manifest file as sent by the client; `source` names it in messages."""

    source: str
    content: str


@dataclass(frozen=True)
class LoadedManifests:
    """The valid result of loading every source of one apply."""

    jobs: list[JobSpec]
    namespaces: list[NamespaceSpec]
    warnings: list[str]


def load_manifests(
    sources: Sequence[ManifestSource],
    policy: Policy,
    defaults: JobDefaults,
    *,
    skip_workers: bool = False,
) -> LoadedManifests:
    """Parse and validate every source; raise ValidationFailed with all problems at once."""
    for source in sources:
        _check_size(source)
    loader = _Loader(_make_context(policy, defaults, skip_workers))
    try:
        for source in sources:
            loader.load(source)
    except _TooManyViolations:
        message = f"too many problems; only the first {_MAX_VIOLATIONS} are shown"
        loader.violations.append(Violation(path="", message=message, code="invalid_value"))
    if loader.violations:
        raise ValidationFailed(loader.violations)
    return LoadedManifests(loader.jobs, loader.namespaces, loader.warnings)


def _check_size(source: ManifestSource) -> None:
    size = len(source.content.encode("utf-8", "surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        raise PayloadTooLarge(
            f"manifest {source.source} is {size} bytes, over the 1 MiB limit "
            f"({MAX_MANIFEST_BYTES} bytes); split it into several files"
        )


# --- where a problem is, and how it is recorded ------------------------------------


class _TooManyViolations(Exception):
    """Stops loading once a pathological input has produced enough to report."""


@dataclass(frozen=True)
class _At:
    """A position in one source: violations recorded here get its path and source."""

    sink: list[Violation]
    source: str
    path: str = ""

    def child(self, key: object) -> _At:
        part = _key_text(key)
        return _At(self.sink, self.source, f"{self.path}.{part}" if self.path else part)

    def fail(self, message: str, code: str) -> None:
        if len(self.sink) >= _MAX_VIOLATIONS:
            raise _TooManyViolations
        message = _printable(message)
        self.sink.append(Violation(path=self.path, message=message, code=code, source=self.source))

    def count(self) -> int:
        return len(self.sink)


def _printable(text: str) -> str:
    """Text safe to put in a JSON response (lone surrogates are escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return _printable(key if len(key) <= 100 else key[:97] + "...")
    return _show(key)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return _OTHER_TYPES.get(type(value).__name__, f"a {type(value).__name__}")


def _show(value: object) -> str:
    """A short rendering of a user value for a message."""
    if isinstance(value, str):
        text = value if len(value) <= 80 else value[:77] + "..."
        return f'"{_printable(text)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return "a very large number"
    if isinstance(value, int | float):
        return str(value)
    return _type_name(value)


def _wrong_type(value: object, at: _At, expected: str) -> None:
    hint = ""
    if expected == "a string" and isinstance(value, bool | int | float):
        hint = f' (quote it: "{_show(value)}")'
    at.fail(f"must be {expected}, not {_type_name(value)}{hint}", "invalid_type")


def _forbid(at: _At, what: str, key: str) -> None:
    at.fail(
        f"{what} is not allowed by the daemon policy; set policy.{key}: true "
        "in the daemon config to allow it",
        "policy_forbidden",
    )


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    options = list(choices)
    by_case = {choice.lower(): choice for choice in options}
    match = by_case.get(word.lower())
    if match is None:
        close = difflib.get_close_matches(word, options, n=1)
        match = close[0] if close else None
    return f' (did you mean "{match}"?)' if match else ""


# --- readers: each returns the parsed value, or None after recording a violation ----


def _check_fields(mapping: dict[Any, Any], at: _At, allowed: Sequence[str]) -> None:
    for key in mapping:
        if isinstance(key, str) and key in allowed:
            continue
        hint = _did_you_mean(key, allowed) if isinstance(key, str) else ""
        at.child(key).fail(f"unknown field {_show(key)}{hint}", "unknown_field")


def _opt(raw: dict[Any, Any], key: str, at: _At, reader: _Reader) -> Any:
    """Read an optional field; a null value counts as not given."""
    value = raw.get(key)
    return None if value is None else reader(value, at.child(key))


def _required(raw: dict[Any, Any], key: str, at: _At, reader: _Reader, hint: str = "") -> Any:
    value = raw.get(key)
    if value is None:
        at.child(key).fail(f"required field{hint}", "required")
        return None
    return reader(value, at.child(key))


def _put(out: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        out[key] = value


def _mapping(value: object, at: _At) -> dict[Any, Any] | None:
    if not isinstance(value, dict):
        _wrong_type(value, at, "a mapping")
        return None
    if len(value) > _MAX_ITEMS:
        at.fail(f"too many entries ({len(value)}; at most {_MAX_ITEMS})", "invalid_value")
        return None
    return value


def _list(value: object, at: _At, expected: str = "a list") -> list[Any] | None:
    if not isinstance(value, list):
        _wrong_type(value, at, expected)
        return None
    if len(value) > _MAX_ITEMS:
        at.fail(f"too many items ({len(value)}; at most {_MAX_ITEMS})", "invalid_value")
        return None
    return value


def _string(value: object, at: _At) -> str | None:
    if not isinstance(value, str):
        _wrong_type(value, at, "a string")
        return None
    if "\x00" in value or _printable(value) != value:
        at.fail("contains a NUL character or invalid Unicode", "invalid_value")
        return None
    return value


def _nonempty(value: object, at: _At) -> str | None:
    text = _string(value, at)
    if text is not None and not text.strip():
        at.fail("must not be empty", "invalid_value")
        return None
    return text


def _bool(value: object, at: _At) -> bool | None:
    if not isinstance(value, bool):
        _wrong_type(value, at, "true or false")
        return None
    return value


def _integer(value: object, at: _At, minimum: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        _wrong_type(value, at, "a whole number")
        return None
    if value < minimum:
        at.fail(f"must be at least {minimum}, not {_show(value)}", "invalid_value")
        return None
    if value > _MAX_INT:
        at.fail(f"is too large (at most {_MAX_INT})", "invalid_value")
        return None
    return value


def _at_least(minimum: int) -> _Reader:
    return lambda value, at: _integer(value, at, minimum)


def _choice(value: object, at: _At, options: Sequence[str], code: str = "invalid_value") -> Any:
    text = _string(value, at)
    if text is None or text in options:
        return text
    choices = " | ".join(options)
    at.fail(f"invalid value {_show(text)} (use {choices}){_did_you_mean(text, options)}", code)
    return None


def _one_of(*options: str) -> _Reader:
    return lambda value, at: _choice(value, at, options)


def _duration(value: object, at: _At, *, allow_zero: bool = True) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        _wrong_type(value, at, "a duration like 30s, 10m or 1h30m, or a number of seconds")
        return None
    try:
        seconds = parse_duration(value)
    except OverflowError:
        seconds = math.inf
    except ValueError as exc:
        at.fail(str(exc), "invalid_value")
        return None
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        at.fail("duration is too long (at most 3650d)", "invalid_value")
        return None
    if seconds == 0 and not allow_zero:
        at.fail("must be longer than 0", "invalid_value")
        return None
    return seconds


def _abs_path(value: object, at: _At) -> str | None:
    text = _nonempty(value, at)
    if text is None:
        return None
    if not text.startswith("/"):
        at.fail(f"{_show(text)} must be an absolute path (starting with /)", "invalid_value")
        return None
    return os.path.normpath(text)


def _dns_label(value: object, at: _At) -> str | None:
    text = _string(value, at)
    if text is not None and not _DNS_LABEL.fullmatch(text):
        at.fail(
            f"invalid name {_show(text)} (use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)",
            "invalid_value",
        )
        return None
    return text


def _string_list(value: object, at: _At, expected: str = "a list of strings") -> list[str] | None:
    items = _list(value, at, expected)
    if items is None:
        return None
    strings = [_string(item, at.child(i)) for i, item in enumerate(items)]
    valid = [s for s in strings if s is not None]
    return valid if len(valid) == len(strings) else None


# --- parsing text into documents ----------------------------------------------------


class _ManifestLoader(_BaseLoader):
    """Safe YAML loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key_node.value)}", key_node.start_mark
                )
            seen.add(ident)
        return super().construct_mapping(node, deep)


def _parse(source: ManifestSource, at: _At) -> list[Any] | None:
    if source.source.lower().endswith(".json"):
        return _parse_json(source.content, at)
    return _parse_yaml(source.content, at)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a valid JSON number")


def _parse_json(content: str, at: _At) -> list[Any] | None:
    try:
        return [json.loads(content, parse_constant=_reject_constant)]
    except json.JSONDecodeError as exc:
        at.fail(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", "invalid_yaml")
    except (ValueError, RecursionError) as exc:
        at.fail(f"invalid JSON: {_short_error(exc)}", "invalid_yaml")
    return None


def _parse_yaml(content: str, at: _At) -> list[Any] | None:
    try:
        return list(yaml.load_all(content, Loader=_ManifestLoader))
    except yaml.MarkedYAMLError as exc:
        at.fail(_marked_error(exc), "invalid_yaml")
    except yaml.reader.ReaderError as exc:
        line, column = _position(content, exc.position)
        at.fail(f"invalid YAML at line {line}, column {column}: {exc.reason}", "invalid_yaml")
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        at.fail(f"invalid YAML: {_short_error(exc)}", "invalid_yaml")
    return None


def _marked_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "syntax error"
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _position(content: str, offset: int) -> tuple[int, int]:
    line = content.count("\n", 0, offset) + 1
    return line, offset - (content.rfind("\n", 0, offset) + 1) + 1


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if "integer string conversion" in str(exc):
        return "a number has too many digits"
    text = _printable(str(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- the loader: documents, sections, duplicates -----------------------------------


@dataclass(frozen=True)
class _Context:
    """Everything entry validation needs besides the entry itself."""

    policy: Policy
    skip_workers: bool
    timeout_seconds: float | None
    stop_grace_seconds: float
    bind_roots: tuple[str, ...]
    docker_sockets: tuple[str, ...]
    allowed_caps: frozenset[str]
    allowed_devices: frozenset[str]


def _make_context(policy: Policy, defaults: JobDefaults, skip_workers: bool) -> _Context:
    roots = {os.path.normpath(p) for p in policy.allowed_bind_paths}
    roots |= {real for p in policy.allowed_bind_paths if (real := _realpath(p))}
    sockets = set(_DOCKER_SOCKETS) | {real for p in _DOCKER_SOCKETS if (real := _realpath(p))}
    devices = {os.path.normpath(p) for p in policy.allowed_devices}
    devices |= {real for p in policy.allowed_devices if (real := _realpath(p))}
    return _Context(
        policy=policy,
        skip_workers=skip_workers,
        timeout_seconds=defaults.timeout_seconds,
        stop_grace_seconds=parse_duration(defaults.stop_grace_period),
        bind_roots=tuple(sorted(roots)),
        docker_sockets=tuple(sorted(sockets)),
        allowed_caps=frozenset(_normalise_capability(c) for c in policy.allowed_capabilities),
        allowed_devices=frozenset(devices),
    )


class _Loader:
    """Accumulates jobs, namespaces, warnings and violations over every source."""

    def __init__(self, context: _Context) -> None:
        self.context = context
        self.violations: list[Violation] = []
        self.jobs: list[JobSpec] = []
        self.namespaces: list[NamespaceSpec] = []
        self.warnings: list[str] = []
        self._seen_jobs: dict[str, str] = {}
        self._seen_namespaces: dict[str, str] = {}

    def load(self, source: ManifestSource) -> None:
        root = _At(self.violations, source.source)
        documents = _parse(source, root)
        for number, document in enumerate(documents or [], start=1):
            label = source.source
            if documents and len(documents) > 1:
                label = f"{source.source} (document {number})"
            self._document(document, root, label)

    def _document(self, document: object, root: _At, label: str) -> None:
        if document is None:
            return
        if not isinstance(document, dict):
            root.fail(
                "a manifest document must be a mapping with deployments: and/or namespaces:, "
                f"not {_type_name(document)}",
                "invalid_type",
            )
            return
        _check_fields(document, root, _TOP_FIELDS)
        for key, entry in _section(document, "deployments", root):
            self._job(entry, root.child("deployments").child(key), label)
        for key, entry in _section(document, "namespaces", root):
            self._namespace(key, entry, root.child("namespaces").child(key), label)

    def _job(self, raw: object, at: _At, label: str) -> None:
        if not isinstance(raw, dict):
            _wrong_type(raw, at, "a mapping (one deployment)")
            return
        if self._is_worker(raw, at, label):
            return
        start = at.count()
        identity = _job_identity(raw, at)
        fields = _job_fields(raw, at, self.context)
        if identity is None:
            return
        namespace, name = identity
        self._register(self._seen_jobs, "job", f"{namespace}/{name}", at, label)
        if at.count() == start:
            spec = _construct(JobSpec, {**fields, "namespace": namespace, "name": name}, at)
            if spec is not None:
                self.jobs.append(spec)

    def _is_worker(self, raw: dict[Any, Any], at: _At, label: str) -> bool:
        if raw.get("kind") != "worker":
            return False
        if self.context.skip_workers:
            self.warnings.append(
                f"skipped worker {label}: {at.path} (ringjobs only runs jobs; --skip-workers)"
            )
        else:
            at.child("kind").fail(
                'kind "worker" is not supported: ringjobs only runs jobs (kind: job); '
                "pass --skip-workers to skip worker entries with a warning",
                "not_supported",
            )
        return True

    def _namespace(self, key: object, raw: object, at: _At, label: str) -> None:
        start = at.count()
        spec = _namespace_spec(key, raw, at)
        if spec is None:
            return
        self._register(self._seen_namespaces, "namespace", spec.name, at, label)
        if at.count() == start:
            self.namespaces.append(spec)

    def _register(self, seen: dict[str, str], noun: str, ident: str, at: _At, label: str) -> None:
        place = f"{label}: {at.path}"
        first = seen.setdefault(ident, place)
        if first != place:
            at.fail(
                f"{noun} {ident} is defined twice: in {first} and in {place}; keep one definition",
                "duplicate",
            )


def _section(document: dict[Any, Any], key: str, root: _At) -> list[tuple[Any, Any]]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        _wrong_type(value, root.child(key), "a mapping of entries")
        return []
    return list(value.items())


def _construct(model: type[_M], fields: dict[str, Any], at: _At) -> _M | None:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors():
            where = at
            for part in error["loc"]:
                where = where.child(part)
            where.fail(error["msg"], "invalid_value")
        return None


# --- job entries -------------------------------------------------------------------


def _job_identity(raw: dict[Any, Any], at: _At) -> tuple[str, str] | None:
    name = _required(raw, "name", at, _dns_label)
    namespace = _opt(raw, "namespace", at, _dns_label)
    if raw.get("namespace") is None:
        namespace = "default"
    if name is None or namespace is None:
        return None
    return namespace, name


def _job_fields(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    _check_fields(raw, at, _JOB_FIELDS)
    fields: dict[str, Any] = {}
    for part in _JOB_PARTS:
        fields.update(part(raw, at, context))
    return fields


def _ring_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    runtime = _opt(raw, "runtime", at, _string)
    if runtime is not None and runtime != "docker":
        at.child("runtime").fail(
            f"runtime {_show(runtime)} is not supported; ringjobs runs runtime: docker",
            "not_supported",
        )
    _opt(raw, "kind", at, _one_of("job", "worker"))
    replicas = _opt(raw, "replicas", at, _at_least(0))
    if replicas is not None and replicas != 1:
        at.child("replicas").fail(
            f"a job runs exactly 1 replica, not {replicas}; "
            "use parallelism and completions to run several containers",
            "invalid_value",
        )
    return {}


def _image_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "source", _opt(raw, "from", at, _live_source))
    if raw.get("from") is None:
        _put(
            out,
            "image",
            _required(raw, "image", at, _image, ' (give an image, or a "from" source)'),
        )
    elif raw.get("image") is not None:
        # The executor runs the source's image; an image beside it would be silently ignored.
        at.child("image").fail(
            "give either image or from, not both "
            "(from takes the source container's image, pinned by ID)",
            "invalid_value",
        )
    return out


def _image(value: object, at: _At) -> str | None:
    text = _nonempty(value, at)
    if text is not None and (text != text.strip() or len(text.split()) != 1):
        at.fail(f"invalid image reference {_show(text)} (no spaces)", "invalid_value")
        return None
    return text


def _command_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    shell = _opt(raw, "shell", at, _bool)
    command = raw.get("command")
    where = at.child("command")
    if shell:
        if command is None:
            where.fail(
                "required field (shell: true runs a command string with /bin/sh -c)", "required"
            )
            return {"shell": True}
        if not isinstance(command, str):
            _wrong_type(command, where, "one string when shell: true")
            return {"shell": True}
        text = _nonempty(command, where)
        return {"shell": True, "command": [text] if text is not None else None}
    if command is None:
        return {}
    if isinstance(command, str):
        where.fail(
            "must be a list of strings, not a string "
            "(or set shell: true to run one string with /bin/sh -c)",
            "invalid_type",
        )
        return {}
    items = _string_list(command, where)
    if items is not None and not items:
        where.fail("must not be empty (leave it out to keep the image's command)", "invalid_value")
    return {"command": items}


def _live_source(value: object, at: _At) -> LiveSource | None:
    raw = _mapping(value, at)
    if raw is None:
        return None
    _check_fields(raw, at, (*_SOURCE_KINDS, "mounts"))
    chosen = [kind for kind in _SOURCE_KINDS if raw.get(kind) is not None]
    if len(chosen) != 1:
        given = f" (got {' and '.join(chosen)})" if chosen else ""
        at.fail(f"give exactly one of container, compose or label{given}", "invalid_value")
        return None
    kind = chosen[0]
    fields: dict[str, Any] = {"mounts": _opt(raw, "mounts", at, _source_mounts) or "none"}
    if kind == "container":
        fields["container"] = _container_name(raw[kind], at.child(kind))
    elif kind == "label":
        fields["label"] = _label_selector(raw[kind], at.child(kind))
    else:
        fields.update(_compose(raw[kind], at.child(kind)))
    if any(value is None for value in fields.values()):
        return None
    return _construct(LiveSource, fields, at)


def _container_name(value: object, at: _At) -> str | None:
    """Docker's container-name pattern: the name is matched exactly, never as an ID prefix
    or a path (it must not reach the engine API's URL as `../..`)."""
    text = _nonempty(value, at)
    if text is None:
        return None
    if not _CONTAINER_NAME.fullmatch(text):
        at.fail(
            f"invalid container name {_show(text)} (Docker names are letters, digits, "
            "_ . and -, starting with a letter or digit; give the exact name, not an ID)",
            "invalid_value",
        )
        return None
    return text.removeprefix("/")


def _source_mounts(value: object, at: _At) -> str | None:
    if isinstance(value, bool):
        return "ro" if value else "none"
    if value in ("ro", "rw"):
        return str(value)
    at.fail(
        f"invalid mounts {_show(value)} (true or ro: the source's mounts read-only; "
        "rw: writable; false: none)",
        "invalid_value",
    )
    return None


def _compose(value: object, at: _At) -> dict[str, Any]:
    raw = _mapping(value, at)
    if raw is None:
        return {"compose_project": None}
    _check_fields(raw, at, ("project", "service"))
    return {
        "compose_project": _required(raw, "project", at, _nonempty),
        "compose_service": _required(raw, "service", at, _nonempty),
    }


def _label_selector(value: object, at: _At) -> str | None:
    text = _nonempty(value, at)
    if text is None:
        return None
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        at.fail(f"invalid label {_show(text)} (use key=value)", "invalid_value")
        return None
    return text


def _environment_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "environment", _opt(raw, "environment", at, _environment))
    return out


def _environment(value: object, at: _At) -> dict[str, EnvValue] | None:
    raw = _mapping(value, at)
    if raw is None:
        return None
    out: dict[str, EnvValue] = {}
    for key, item in raw.items():
        where = at.child(key)
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            where.fail(
                f"invalid variable name {_show(key)} "
                "(use letters, digits and _, not starting with a digit)",
                "invalid_value",
            )
            continue
        env_value = _env_value(item, where)
        if env_value is not None:
            out[key] = env_value
    return out


def _env_value(value: object, at: _At) -> EnvValue | None:
    if isinstance(value, dict):
        return _secret_ref(value, at)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value, at)
    if value is None:
        at.fail('must be a value, not null (write "" for an empty string)', "invalid_value")
        return None
    if isinstance(value, str):
        return _string(value, at)
    _wrong_type(value, at, "a string, a number, a boolean or {secretRef: NAME}")
    return None


def _number_text(value: int | float, at: _At) -> str | None:
    try:
        return str(value)
    except ValueError:
        at.fail("number is too large; quote it as a string", "invalid_value")
        return None


def _secret_ref(raw: dict[Any, Any], at: _At) -> SecretRef | None:
    _check_fields(raw, at, ("secretRef",))
    name = _required(raw, "secretRef", at, _nonempty, " (the name of a secret of the namespace)")
    if name is None:
        return None
    return SecretRef.model_validate({"secretRef": name})


def _volumes_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    value = raw.get("volumes")
    if value is None:
        return {}
    where = at.child("volumes")
    items = _list(value, where)
    if items is None:
        return {}
    mounts = [_volume(item, where.child(i), context) for i, item in enumerate(items)]
    _check_destinations(mounts, where)
    return {"volumes": [mount for mount in mounts if mount is not None]}


def _volume(item: object, at: _At, context: _Context) -> VolumeMount | None:
    if isinstance(item, str):
        return _volume_from_string(item, at, context)
    if isinstance(item, dict):
        return _volume_from_mapping(item, at, context)
    _wrong_type(item, at, 'a "SOURCE:DESTINATION[:ro]" string or a mapping')
    return None


def _volume_from_mapping(raw: dict[Any, Any], at: _At, context: _Context) -> VolumeMount | None:
    _check_fields(raw, at, _VOLUME_FIELDS)
    kind = _required(
        raw, "type", at, lambda v, a: _choice(v, a, ("bind", "volume"), "not_supported")
    )
    source = _required(raw, "source", at, _nonempty)
    destination = _required(raw, "destination", at, _destination)
    driver = _opt(raw, "driver", at, _string)
    if driver is not None and driver != "local":
        at.child("driver").fail(
            f"volume driver {_show(driver)} is not supported (only local)", "not_supported"
        )
    permission = _opt(raw, "permission", at, _one_of("ro", "rw"))
    if kind is None or source is None or destination is None:
        return None
    if kind == "bind" and not source.startswith("/"):
        at.child("source").fail("a bind mount source must be an absolute path", "invalid_value")
        return None
    return _mount(kind, source, destination, permission == "ro", at.child("source"), context)


def _volume_from_string(text: str, at: _At, context: _Context) -> VolumeMount | None:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        at.fail(
            f"invalid volume {_show(text)} (use SOURCE:DESTINATION or SOURCE:DESTINATION:ro)",
            "invalid_value",
        )
        return None
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        at.fail(
            f"invalid mode {_show(mode)} in volume {_show(text)} (use ro or rw)", "invalid_value"
        )
        return None
    destination = _destination(parts[1], at)
    if destination is None or _string(parts[0], at) is None:
        return None
    kind: Literal["bind", "volume"] = "bind" if parts[0].startswith("/") else "volume"
    return _mount(kind, parts[0], destination, mode == "ro", at, context)


def _destination(value: object, at: _At) -> str | None:
    path = _abs_path(value, at)
    if path == "/":
        at.fail('cannot mount over "/"', "invalid_value")
        return None
    return path


def _mount(
    kind: Literal["bind", "volume"],
    source: str,
    destination: str,
    read_only: bool,
    at: _At,
    context: _Context,
) -> VolumeMount:
    if kind == "bind":
        _check_bind(source, at, context)
        source = os.path.normpath(source)
    elif not _VOLUME_NAME.fullmatch(source):
        at.fail(
            f"invalid volume name {_show(source)} (letters, digits, '_', '.', '-'; "
            "a bind mount source must be an absolute path)",
            "invalid_value",
        )
    return VolumeMount(type=kind, source=source, destination=destination, read_only=read_only)


def _check_destinations(mounts: list[VolumeMount | None], at: _At) -> None:
    seen: dict[str, int] = {}
    for index, mount in enumerate(mounts):
        if mount is None:
            continue
        first = seen.setdefault(mount.destination, index)
        if first != index:
            at.child(index).fail(
                f"destination {_show(mount.destination)} is already used by volumes.{first}",
                "duplicate",
            )


def _realpath(path: str) -> str | None:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_bind(source: str, at: _At, context: _Context) -> None:
    real = _realpath(source)
    if real is None:
        at.fail(f"invalid path {_show(source)}", "invalid_value")
        return
    if _exposes_docker_socket(source, real, context) and not context.policy.allow_docker_socket:
        _forbid(
            at,
            f"bind mount source {_show(source)} gives access to the Docker socket, which",
            "allow_docker_socket",
        )
    if not any(_is_under(real, root) for root in context.bind_roots):
        allowed = context.policy.allowed_bind_paths
        listed = f": {', '.join(allowed)}" if allowed else " is empty"
        resolved = f" (resolves to {_show(real)})" if real != source else ""
        at.fail(
            f"bind mount source {_show(source)}{resolved} is outside the allowed paths "
            f"(policy.allowed_bind_paths{listed}); add a parent directory to "
            "policy.allowed_bind_paths in the daemon config",
            "policy_forbidden",
        )


def policy_refusals(spec: JobSpec, policy: Policy) -> list[str]:
    """What a stored snapshot asks that the daemon's policy does not allow (any more).

    Apply checks a manifest against the policy of its day; a policy tightened since must
    also stop the stored jobs, reruns and schedule fires that ask for what it removed.
    """
    context = _make_context(policy, JobDefaults(), False)
    unconfined = {opt.split("=", 1)[0] for opt in spec.security_opt if opt.endswith("=unconfined")}
    asked = [
        (spec.privileged and not policy.allow_privileged, "privileged: true", "allow_privileged"),
        (
            spec.network == "host" and not policy.allow_host_network,
            "network: host",
            "allow_host_network",
        ),
        (spec.pid_mode == "host" and not policy.allow_host_pid, "pid: host", "allow_host_pid"),
        (spec.ipc_mode == "host" and not policy.allow_host_ipc, "ipc: host", "allow_host_ipc"),
        (spec.uts_mode == "host" and not policy.allow_host_uts, "uts: host", "allow_host_uts"),
        (
            spec.userns_mode == "host" and not policy.allow_host_userns,
            "userns_mode: host",
            "allow_host_userns",
        ),
        (
            "seccomp" in unconfined and not policy.allow_unconfined_seccomp,
            "security_opt seccomp=unconfined",
            "allow_unconfined_seccomp",
        ),
        (
            "apparmor" in unconfined and not policy.allow_unconfined_apparmor,
            "security_opt apparmor=unconfined",
            "allow_unconfined_apparmor",
        ),
    ]
    caps = context.allowed_caps
    asked += [
        (cap not in caps and "ALL" not in caps, f"capability {cap}", "allowed_capabilities")
        for cap in map(_normalise_capability, spec.cap_add)
    ]
    for device in spec.devices:
        host = os.path.normpath(device.split(":", 1)[0])
        known = host in context.allowed_devices or _realpath(host) in context.allowed_devices
        asked.append((not known, f"device {host}", "allowed_devices"))
    return [
        f"the job asks for {what}, which the daemon's policy does not allow "
        f"(policy.{key}); allow it in the daemon config, or change the job"
        for refused, what, key in asked
        if refused
    ]


def bind_source_now(source: str, policy: Policy) -> str:
    """The bind source resolved again just before the container is made.

    A symlink placed under an allowed path after apply would otherwise let Docker mount
    whatever it points to; the resolved path is what Docker gets. Raises ValueError.
    """
    context = _make_context(policy, JobDefaults(), skip_workers=False)
    real = _realpath(source)
    if real is None or not any(_is_under(real, root) for root in context.bind_roots):
        raise ValueError(
            f"bind mount source {source!r} now resolves to {real!r}, outside "
            "policy.allowed_bind_paths (a symlink changed since apply?)"
        )
    if _exposes_docker_socket(source, real, context) and not policy.allow_docker_socket:
        raise ValueError(
            f"bind mount source {source!r} now resolves to {real!r}, which gives access to "
            "the Docker socket (policy.allow_docker_socket is false)"
        )
    return real


def _exposes_docker_socket(source: str, real: str, context: _Context) -> bool:
    if os.path.basename(real) == "docker.sock" or os.path.basename(source) == "docker.sock":
        return True
    # Mounting a directory that contains the socket exposes it just the same.
    return any(_is_under(sock, real) or _is_under(sock, source) for sock in context.docker_sockets)


def _labels_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "labels", _opt(raw, "labels", at, _labels))
    return out


def _labels(value: object, at: _At) -> dict[str, str] | None:
    if isinstance(value, list):
        pairs = _label_list(value, at)
    elif isinstance(value, dict):
        pairs = _label_map(value, at)
    else:
        _wrong_type(value, at, 'a mapping, or a list of "key=value" strings')
        return None
    out: dict[str, str] = {}
    for key, text, where in pairs:
        if key.startswith(_RESERVED_LABEL_PREFIX):
            where.fail(
                f"label {_show(key)} is reserved: keys starting with "
                f"{_RESERVED_LABEL_PREFIX} are set by ringjobs itself",
                "invalid_value",
            )
        out[key] = text
    return out


def _label_list(value: list[Any], at: _At) -> list[tuple[str, str, _At]]:
    items = _list(value, at)
    pairs = []
    for index, item in enumerate(items or []):
        where = at.child(index)
        text = _string(item, where)
        if text is None:
            continue
        key, sep, label_value = text.partition("=")
        if not sep or not key.strip():
            where.fail(f"invalid label {_show(text)} (use key=value)", "invalid_value")
            continue
        pairs.append((key.strip(), label_value, where))
    return pairs


def _label_map(value: dict[Any, Any], at: _At) -> list[tuple[str, str, _At]]:
    raw = _mapping(value, at)
    pairs = []
    for key, item in (raw or {}).items():
        where = at.child(key)
        if not isinstance(key, str) or not key.strip():
            where.fail(f"invalid label key {_show(key)} (use a non-empty string)", "invalid_value")
            continue
        text = _string(item, where)
        if text is not None:
            pairs.append((key, text, where))
    return pairs


def _resources_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "resources", _opt(raw, "resources", at, _resources))
    return out


def _resources(value: object, at: _At) -> Resources | None:
    raw = _mapping(value, at)
    if raw is None:
        return None
    _check_fields(raw, at, ("limits", "requests"))
    cpu_limit, memory_limit = _resource_pair(raw.get("limits"), at.child("limits"))
    cpu_request, memory_request = _resource_pair(raw.get("requests"), at.child("requests"))
    requests = at.child("requests")
    if cpu_limit and cpu_request and cpu_request > cpu_limit:
        requests.child("cpu").fail("cpu request is larger than the cpu limit", "invalid_value")
    if memory_limit and memory_request and memory_request > memory_limit:
        requests.child("memory").fail(
            f"memory request ({format_bytes(memory_request)}) is larger than the memory "
            f"limit ({format_bytes(memory_limit)})",
            "invalid_value",
        )
    return Resources(
        cpu_limit_nanos=cpu_limit,
        memory_limit_bytes=memory_limit,
        cpu_request_nanos=cpu_request,
        memory_request_bytes=memory_request,
    )


def _resource_pair(value: object, at: _At) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    raw = _mapping(value, at)
    if raw is None:
        return None, None
    _check_fields(raw, at, ("cpu", "memory"))
    cpu = _opt(raw, "cpu", at, lambda v, a: _quantity(v, a, parse_cpu))
    memory = _opt(raw, "memory", at, lambda v, a: _quantity(v, a, _parse_memory))
    return cpu, memory


def _parse_memory(value: str | int | float) -> int:
    return parse_memory(str(value) if isinstance(value, float) else value)


def _quantity(value: object, at: _At, parse: Callable[[str | int | float], int]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        _wrong_type(value, at, "a quantity like 512Mi, 4Gi, 500m or 2")
        return None
    try:
        result = parse(value)
    except OverflowError:
        result = _MAX_QUANTITY + 1
    except ValueError as exc:
        at.fail(_short_error(exc), "invalid_value")
        return None
    if result > _MAX_QUANTITY:
        at.fail(f"quantity {_show(value)} is too large", "invalid_value")
        return None
    return result


def _config_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    value = raw.get("config")
    if value is None:
        return {}
    where = at.child("config")
    config = _mapping(value, where)
    if config is None:
        return {}
    _check_fields(config, where, ("user", "image_pull_policy"))
    out: dict[str, Any] = {}
    _put(out, "user", _opt(config, "user", where, _user))
    policies = ("Always", "IfNotPresent", "Never")
    _put(out, "image_pull_policy", _opt(config, "image_pull_policy", where, _one_of(*policies)))
    return out


def _user(value: object, at: _At) -> str | None:
    text = _nonempty(value, at)
    if text is not None and not _USER.fullmatch(text):
        at.fail(
            f"invalid user {_show(text)} (use a name or uid, optionally :group or :gid, "
            'like "1000:1000" or "app")',
            "invalid_value",
        )
        return None
    return text


def _timeout_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    value = raw.get("timeout")
    if value is None:
        return {"timeout_seconds": context.timeout_seconds}
    if isinstance(value, str) and value.strip().lower() == "none":
        return {"timeout_seconds": None}
    seconds = _duration(value, at.child("timeout"), allow_zero=False)
    return {"timeout_seconds": seconds}


def _cron(value: object, at: _At) -> str | None:
    text = _nonempty(value, at)
    if text is None:
        return None
    fields = text.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0].lower() in _CRON_MACROS:
            return fields[0].lower()
        problem = f"unknown macro (use {', '.join(_CRON_MACROS)})"
    elif len(fields) != 5:
        problem = (
            "expected 5 fields (minute hour day-of-month month day-of-week) or a macro like @daily"
        )
    else:
        problem = next(filter(None, map(_cron_field_problem, fields, _CRON_FIELDS)), "")
        if not problem:
            return " ".join(fields)
    at.fail(f"invalid schedule {_show(text)}: {problem}", "invalid_value")
    return None


def _cron_field_problem(field: str, spec: tuple[str, int, int, dict[str, int]]) -> str | None:
    name, low, high, names = spec
    for item in field.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if match is None:
            return f"bad {name} field {_show(field)}"
        _, start, end, step = match.groups()
        if step is not None and int(step) == 0:
            return f"step 0 in {name} field {_show(field)}"
        for part in (start, end):
            number = _cron_number(part, names)
            if part is not None and (number is None or not low <= number <= high):
                return f"{name} value {_show(part)} is out of range ({low}-{high})"
    return None


def _cron_number(part: str | None, names: dict[str, int]) -> int | None:
    if part is None:
        return None
    if part.isdigit():
        return int(part)
    return names.get(part.upper())


def _time_zone(value: object, at: _At) -> str | None:
    text = _nonempty(value, at)
    if text is None:
        return None
    try:
        ZoneInfo(text)
    except (KeyError, ValueError, OSError):
        at.fail(
            f"unknown time zone {_show(text)} (use an IANA name like Europe/Paris or UTC)",
            "invalid_value",
        )
        return None
    return text


def _history_limit(value: object, at: _At) -> HistoryLimit | None:
    raw = _mapping(value, at)
    if raw is None:
        return None
    _check_fields(raw, at, ("succeeded", "failed"))
    succeeded = _opt(raw, "succeeded", at, _at_least(0))
    failed = _opt(raw, "failed", at, _at_least(0))
    return HistoryLimit(succeeded=succeeded, failed=failed)


def _tmpfs(value: object, at: _At) -> dict[str, str] | None:
    if isinstance(value, list):
        items = [(path, "", at.child(i)) for i, path in enumerate(_list(value, at) or [])]
    elif isinstance(value, dict):
        raw = _mapping(value, at) or {}
        items = [(path, "" if opts is None else opts, at.child(path)) for path, opts in raw.items()]
    else:
        _wrong_type(value, at, "a mapping of path: options, or a list of paths")
        return None
    out: dict[str, str] = {}
    for path, options, where in items:
        absolute = _abs_path(path, where)
        text = _tmpfs_options(options, where)
        if absolute is not None and text is not None:
            out[absolute] = text
    return out


def _tmpfs_options(value: object, at: _At) -> str | None:
    text = _string(value, at)
    if not text:
        return text
    bad = [option for option in text.split(",") if not _TMPFS_OPTION.fullmatch(option)]
    if bad:
        at.fail(
            f"invalid tmpfs option {_show(bad[0])} (use size=64m, mode=1777, uid=N, gid=N, "
            "nr_inodes=N, ro, noexec, nosuid, nodev; suid and dev are refused)",
            "invalid_value",
        )
        return None
    return text


_SCALAR_FIELDS: dict[str, tuple[str, _Reader]] = {
    "working_dir": ("working_dir", _abs_path),
    "stop_grace_period": ("stop_grace_period_seconds", _duration),
    "backoff_limit": ("backoff_limit", _at_least(0)),
    "restart_policy": ("restart_policy", _one_of("Never", "OnFailure")),
    "parallelism": ("parallelism", _at_least(1)),
    "completions": ("completions", _at_least(1)),
    "concurrency_policy": ("concurrency_policy", _one_of("Forbid", "Allow", "Queue", "Replace")),
    "schedule": ("schedule", _cron),
    "time_zone": ("time_zone", _time_zone),
    "starting_deadline": ("starting_deadline_seconds", _duration),
    "suspend": ("suspend", _bool),
    "history_limit": ("history_limit", _history_limit),
    "keep_container": ("keep_container_seconds", _duration),
    "read_only_rootfs": ("read_only_rootfs", _bool),
    "tmpfs": ("tmpfs", _tmpfs),
}


def _scalar_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {"stop_grace_period_seconds": context.stop_grace_seconds}
    for key, (field, reader) in _SCALAR_FIELDS.items():
        _put(out, field, _opt(raw, key, at, reader))
    _retry_policy(out, at)
    return out


def _retry_policy(out: dict[str, Any], at: _At) -> None:
    """backoff_limit alone means OnFailure; an explicit Never with retries contradicts it."""
    limit = out.get("backoff_limit") or 0
    policy = out.get("restart_policy")
    if limit > 0 and policy is None:
        out["restart_policy"] = "OnFailure"
    elif limit > 0 and policy == "Never":
        at.child("restart_policy").fail(
            f"restart_policy: Never forbids the {limit} retries backoff_limit asks for; "
            "use OnFailure to retry, or set backoff_limit: 0",
            "invalid_value",
        )


def _network_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    where = at.child("network")
    network = _opt(raw, "network", at, _one_of("namespace", "none", "source", "host"))
    if network == "source" and raw.get("from") is None:
        where.fail('network: source needs a "from" source whose networks to join', "invalid_value")
    if network == "host" and not context.policy.allow_host_network:
        _forbid(where, "network: host", "allow_host_network")
    return {"network": network} if network else {}


def _privilege_part(raw: dict[Any, Any], at: _At, context: _Context) -> dict[str, Any]:
    policy = context.policy
    out: dict[str, Any] = {}
    privileged = _opt(raw, "privileged", at, _bool)
    if privileged and not policy.allow_privileged:
        _forbid(at.child("privileged"), "privileged: true", "allow_privileged")
    _put(out, "privileged", privileged)
    _put(out, "cap_add", _opt(raw, "cap_add", at, lambda v, a: _capabilities(v, a, context)))
    _put(out, "pid_mode", _host_mode(raw, "pid", at, policy.allow_host_pid, "allow_host_pid"))
    _put(out, "ipc_mode", _host_mode(raw, "ipc", at, policy.allow_host_ipc, "allow_host_ipc"))
    _put(out, "uts_mode", _host_mode(raw, "uts", at, policy.allow_host_uts, "allow_host_uts"))
    userns = _host_mode(raw, "userns_mode", at, policy.allow_host_userns, "allow_host_userns")
    _put(out, "userns_mode", userns)
    _put(out, "devices", _opt(raw, "devices", at, lambda v, a: _devices(v, a, context)))
    _put(out, "security_opt", _opt(raw, "security_opt", at, lambda v, a: _security(v, a, policy)))
    return out


def _host_mode(raw: dict[Any, Any], key: str, at: _At, allowed: bool, policy_key: str) -> Any:
    mode = _opt(raw, key, at, _one_of("host"))
    if mode == "host" and not allowed:
        _forbid(at.child(key), f"{key}: host", policy_key)
    return mode


def _devices(value: object, at: _At, context: _Context) -> list[str] | None:
    items = _string_list(value, at)
    if items is None:
        return None
    found = [_device(text, at.child(i), context) for i, text in enumerate(items)]
    return list(dict.fromkeys(d for d in found if d is not None))


def _device(text: str, at: _At, context: _Context) -> str | None:
    """HOST[:CONTAINER[:PERMISSIONS]] with an allowed host device, as Docker's --device."""
    parts = text.split(":")
    host = os.path.normpath(parts[0]) if parts[0].startswith("/") else ""
    inside = parts[1] if len(parts) > 1 else parts[0]
    permissions = parts[2] if len(parts) > 2 else "rwm"
    if (
        len(parts) > 3
        or not host.startswith("/dev/")
        or not inside.startswith("/")
        or not _DEVICE_PERMISSIONS.fullmatch(permissions)
    ):
        at.fail(
            f"invalid device {_show(text)} (use /dev/HOST[:/dev/CONTAINER[:rwm]])",
            "invalid_value",
        )
        return None
    if _realpath(host) not in context.allowed_devices:
        listed = ", ".join(sorted(context.policy.allowed_devices)) or "empty"
        at.fail(
            f'device "{host}" is not allowed (policy.allowed_devices: {listed}); '
            "add it to policy.allowed_devices in the daemon config",
            "policy_forbidden",
        )
        return None
    return f"{host}:{os.path.normpath(inside)}:{permissions}"


def _security(value: object, at: _At, policy: Policy) -> list[str] | None:
    items = _string_list(value, at)
    if items is None:
        return None
    out: list[str] = []
    for index, text in enumerate(items):
        kind, _, setting = text.strip().replace(":", "=", 1).partition("=")
        key, where = _SECURITY_OPTS.get(kind), at.child(index)
        if kind == "no-new-privileges" and setting in ("", "true"):
            continue  # always set by ringjobs
        if key is None or setting != "unconfined":
            where.fail(
                f"security option {_show(text)} is not supported (only seccomp=unconfined "
                "and apparmor=unconfined, each behind a policy key; no-new-privileges is "
                "always on)",
                "not_supported",
            )
        elif not getattr(policy, key):
            _forbid(where, f"{kind}=unconfined", key)
        elif f"{kind}=unconfined" not in out:
            out.append(f"{kind}=unconfined")
    return out


def _normalise_capability(name: str) -> str:
    name = name.strip().upper()
    return name[len("CAP_") :] if name.startswith("CAP_") else name


def _capabilities(value: object, at: _At, context: _Context) -> list[str] | None:
    names = _string_list(value, at)
    if names is None:
        return None
    allowed = context.allowed_caps
    out: list[str] = []
    for index, name in enumerate(names):
        cap, where = _normalise_capability(name), at.child(index)
        if not _CAPABILITY.fullmatch(cap):
            where.fail(
                f"invalid capability {_show(name)} (like NET_ADMIN or CHOWN)", "invalid_value"
            )
        elif cap not in allowed and "ALL" not in allowed:
            listed = ", ".join(sorted(allowed)) or "empty"
            where.fail(
                f'capability "{cap}" is not allowed (policy.allowed_capabilities: {listed}); '
                "add it to policy.allowed_capabilities in the daemon config",
                "policy_forbidden",
            )
        elif cap not in out:
            out.append(cap)
    return out


_JOB_PARTS: tuple[_Part, ...] = (
    _ring_part,
    _image_part,
    _command_part,
    _environment_part,
    _volumes_part,
    _labels_part,
    _resources_part,
    _config_part,
    _timeout_part,
    _scalar_part,
    _network_part,
    _privilege_part,
)


# --- namespace entries -------------------------------------------------------------


def _namespace_spec(key: object, value: object, at: _At) -> NamespaceSpec | None:
    raw = {} if value is None else _mapping(value, at)
    if raw is None:
        return None
    _check_fields(raw, at, _NAMESPACE_FIELDS)
    if raw.get("name") is not None:
        name = _dns_label(raw["name"], at.child("name"))
    else:
        name = _dns_label(_key_text(key), at)
    environment = _opt(raw, "environment", at, _environment) or {}
    network = _opt(raw, "network", at, _one_of("namespace", "none"))
    # Job defaults: the limits a job of the namespace gets unless it sets its own.
    cpu, memory = _resource_pair(raw.get("defaults"), at.child("defaults"))
    if name is None:
        return None
    fields = {"name": name, "environment": environment, "network": network}
    return _construct(
        NamespaceSpec, {**fields, "default_cpu_nanos": cpu, "default_memory_bytes": memory}, at
    )


EXEC_JOB_NAME = "exec"
_EXEC_FIELDS = ("namespace", "image", "from", "command", "environment", "timeout", "network")


def exec_spec(body: dict[str, Any], policy: Policy, defaults: JobDefaults) -> JobSpec:
    """The JobSpec of `ringjobs exec`: its fields checked exactly like a manifest entry's."""
    unknown = sorted(str(k) for k in body if k not in _EXEC_FIELDS)
    entry = {k: body[k] for k in _EXEC_FIELDS if k in body}
    if isinstance(entry.get("from"), str):
        entry["from"] = parse_source_selector(entry["from"])
    entry.update({"name": EXEC_JOB_NAME, "kind": "job"})
    text = json.dumps({"deployments": {"exec": entry}}, default=str)
    try:
        loaded = load_manifests([ManifestSource("exec", text)], policy, defaults)
    except ValidationFailed as exc:
        raise ValidationFailed(
            [_exec_violation(v) for v in exc.violations], title="invalid exec request"
        ) from None
    if unknown:
        raise ValidationFailed(
            [
                Violation(
                    path=k,
                    message=f"unknown field (known: {', '.join(_EXEC_FIELDS)})",
                    code="unknown_field",
                )
                for k in unknown
            ],
            title="invalid exec request",
        )
    return loaded.jobs[0]


def parse_source_selector(text: str) -> dict[str, Any]:
    """`exec --from`: NAME or container:NAME, compose:PROJECT/SERVICE, label:KEY=VALUE."""
    kind, sep, rest = text.partition(":")
    if sep and kind == "compose":
        project, _, service = rest.partition("/")
        return {"compose": {"project": project, "service": service or None}}
    if sep and kind == "label":
        return {"label": rest}
    if sep and kind == "container":
        return {"container": rest}
    return {"container": text}


def _exec_violation(violation: Violation) -> Violation:
    path = violation.path.removeprefix("deployments.exec.").removeprefix("deployments.exec")
    return Violation(
        path=f"exec.{path}" if path else "exec", message=violation.message, code=violation.code
    )


_OVERRIDE_FIELDS = ("command", "env", "timeout", "backoff_limit")


def apply_overrides(spec: JobSpec, body: dict[str, Any], defaults: JobDefaults) -> JobSpec:
    """A run's snapshot with the safe per-run overrides of `job run` and `run rerun`."""
    entry: dict[str, Any] = {"name": spec.name, "image": "x"}
    if body.get("command") is not None:
        entry["command"] = body["command"]
    if body.get("env") is not None:
        entry["environment"] = body["env"]
    for key in ("timeout", "backoff_limit"):
        if body.get(key) is not None:
            entry[key] = body[key]
    violations = [
        Violation(
            path=f"overrides.{k}",
            message=f"not an override (allowed: {', '.join(_OVERRIDE_FIELDS)})",
            code="unknown_field",
        )
        for k in body
        if k not in _OVERRIDE_FIELDS
    ]
    text = json.dumps({"deployments": {"run": entry}}, default=str)
    try:
        parsed = load_manifests([ManifestSource("overrides", text)], Policy(), defaults).jobs[0]
    except ValidationFailed as exc:
        violations += [_override_violation(v) for v in exc.violations]
    if violations:
        raise ValidationFailed(violations, title="invalid run overrides")
    return spec.model_copy(update=_override_update(spec, body, parsed))


def _override_update(spec: JobSpec, body: dict[str, Any], parsed: JobSpec) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if body.get("command") is not None:
        update["command"] = parsed.command
    if body.get("env") is not None:
        update["environment"] = {**spec.environment, **parsed.environment}
    if body.get("timeout") is not None:
        update["timeout_seconds"] = parsed.timeout_seconds
    if body.get("backoff_limit") is not None:
        update["backoff_limit"] = parsed.backoff_limit
        update["restart_policy"] = "OnFailure" if parsed.backoff_limit else "Never"
    return update


def _override_violation(violation: Violation) -> Violation:
    path = violation.path.removeprefix("deployments.run.")
    path = {"environment": "env"}.get(path.split(".")[0], path.split(".")[0])
    return Violation(path=f"overrides.{path}", message=violation.message, code=violation.code)


def bind_mount_problems(source: str, policy: Policy) -> list[str]:
    """Why `policy` forbids binding host path `source` (empty if allowed): the check a
    manifest's bind mounts get at apply time, for mounts copied from a live source."""
    violations: list[Violation] = []
    _check_bind(source, _At(violations, ""), _make_context(policy, JobDefaults(), False))
    return [v.message for v in violations]
