"""config.example.yaml documents every config key, with the default as its value."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from ringjobs.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
# Their defaults depend on the user running the daemon, so the example shows them
# commented out, with the root and non-root defaults in the comment.
PATH_KEYS = {"socket", "database"}
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<commented># )?(?P<key>[a-z_]+):(?: |$)")


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            paths.extend(_field_paths(section, f"{prefix}{name}."))
    return paths


def _keys_in_example(text: str) -> dict[str, bool]:
    """Dotted key -> whether the line right above it is a comment."""
    keys: dict[str, bool] = {}
    parents: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match and (not match["commented"] or match["key"] in PATH_KEYS):
            indent = len(match["indent"])
            parents = [(i, key) for i, key in parents if i < indent]
            path = ".".join([key for _, key in parents] + [match["key"]])
            keys[path] = previous.lstrip().startswith("#")
            parents.append((indent, match["key"]))
        previous = line
    return keys


def test_example_loads_to_the_defaults() -> None:
    loaded = load_config(EXAMPLE, environ={})

    assert loaded.model_dump(exclude=PATH_KEYS) == Config().model_dump(exclude=PATH_KEYS)


def test_path_keys_are_left_to_their_per_user_defaults() -> None:
    text = EXAMPLE.read_text()

    assert PATH_KEYS.isdisjoint(yaml.safe_load(text))
    for documented in (
        "# socket: /run/ringjobs/ringjobs.sock",
        "$XDG_RUNTIME_DIR/ringjobs/ringjobs.sock",
        "# database: /var/lib/ringjobs/ringjobs.db",
        "$XDG_DATA_HOME/ringjobs/ringjobs.db",
    ):
        assert documented in text


def test_every_config_key_is_in_the_example_with_a_comment() -> None:
    keys = _keys_in_example(EXAMPLE.read_text())

    missing = [path for path in _field_paths(Config) if path not in keys]
    undocumented = [path for path, commented in keys.items() if not commented]
    assert missing == [], f"add these keys, with a comment, to {EXAMPLE.name}"
    assert undocumented == [], f"put a comment above these keys in {EXAMPLE.name}"


def test_every_key_in_the_example_is_a_config_key() -> None:
    keys = _keys_in_example(EXAMPLE.read_text())

    assert sorted(set(keys) - set(_field_paths(Config))) == []
