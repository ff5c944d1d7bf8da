"""Interpolation of manifest text and --env-file parsing (SPEC 2)."""

from __future__ import annotations

import pytest

from ringjobs.interpolate import InterpolationError, interpolate, parse_env_file

ENV = {"TAG": "3.19", "EMPTY": "", "DB": "postgres://db/app", "NAME": "web"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image: alpine:$TAG", "image: alpine:3.19"),
        ("image: alpine:${TAG}", "image: alpine:3.19"),
        ("${NAME}-x", "web-x"),
        ("$NAME-x", "web-x"),
        ("$NAME_x", None),  # the name runs on through letters, digits and _
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${TAG:-fallback}", "3.19"),
        ("${UNSET:-}", ""),
        ("${UNSET:-a b: c}", "a b: c"),
        ("${UNSET:-$TAG}", "3.19"),
        ("${UNSET:-${NAME}}", "web"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("cost: $$5", "cost: $5"),
        ("$$TAG", "$TAG"),
        ("$${TAG}", "${TAG}"),
        ("${UNSET:-$$}", "$"),
        ("$1 $ $- $", "$1 $ $- $"),
        ("no variables at all", "no variables at all"),
        ("", ""),
    ],
)
def test_forms(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InterpolationError) as info:
            interpolate(text, ENV)
        assert info.value.missing == ["NAME_x"]
    else:
        assert interpolate(text, ENV) == expected


def test_empty_value_is_used_without_default() -> None:
    assert interpolate("[$EMPTY][${EMPTY}]", ENV) == "[][]"


def test_unused_default_is_not_checked() -> None:
    assert interpolate("${TAG:-$UNSET}", ENV) == "3.19"


def test_every_missing_variable_is_reported_once_in_order_with_lines() -> None:
    text = "a: $TAG\nb: $DB_URL\nc: ${TAG}\nd: $IMAGE\ne: ${DB_URL}\nf: ${X:-$IMAGE}\n"
    with pytest.raises(InterpolationError) as info:
        interpolate(text, {"TAG": "1"})
    assert info.value.missing == ["DB_URL", "IMAGE"]
    message = str(info.value)
    assert message.startswith("undefined variables: DB_URL (lines 2, 5), IMAGE (lines 4, 6);")
    assert "--env-file" in message
    assert "${VAR:-default}" in message
    assert "$$ for a literal $" in message


def test_single_missing_variable_message() -> None:
    with pytest.raises(InterpolationError, match=r"^undefined variable: TAG \(line 1\);"):
        interpolate("image: app:$TAG", {})


def test_interpolation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        interpolate("$NOPE", {})


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a\nb: ${TAG", 2, "unterminated"),
        ("${}", 1, 'bad substitution "${}"'),
        ("x\n\n${1X}", 3, 'bad substitution "${1X}"'),
        ("${TAG-x}", 1, "bad substitution"),
        ("${TAG:x}", 1, "bad substitution"),
        ("${A B}", 1, "bad substitution"),
    ],
)
def test_syntax_errors_name_their_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate(text, ENV)
    assert f"line {line}: " in str(info.value)
    assert fragment in str(info.value)


def test_syntax_errors_and_missing_variables_are_reported_together() -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate("${}\n$MISSING\n${", {})
    message = str(info.value)
    assert "line 1: bad substitution" in message
    assert "line 3: unterminated" in message
    assert "undefined variable: MISSING (line 2)" in message
    assert info.value.missing == ["MISSING"]


def test_value_is_not_interpolated_again() -> None:
    assert interpolate("$A", {"A": "$B"}) == "$B"


def test_env_file() -> None:
    text = """
# a comment
  SPACED = around  \t
PLAIN=value
export EXPORTED=yes
DOUBLE="quoted value # not a comment"
SINGLE='single $x'
EMPTY=
EQUALS=a=b=c
COMMENTED=value # trailing comment
HASH=a#b
QUOTED_COMMENT="x" # fine
"""
    assert parse_env_file(text) == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "around",
        "DOUBLE": "quoted value # not a comment",
        "SINGLE": "single $x",
        "EMPTY": "",
        "EQUALS": "a=b=c",
        "COMMENTED": "value",
        "HASH": "a#b",
        "QUOTED_COMMENT": "x",
    }


def test_env_file_later_line_wins() -> None:
    assert parse_env_file("A=1\nA=2\n") == {"A": "2"}


def test_env_file_reports_every_invalid_line_with_source() -> None:
    text = "GOOD=1\nno equals sign\n1BAD=x\nQ=\"open\nR='a' junk\n"
    with pytest.raises(InterpolationError) as info:
        parse_env_file(text, source="prod.env")
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("prod.env, line 2: expected KEY=VALUE")
    assert lines[1].startswith('prod.env, line 3: invalid variable name "1BAD"')
    assert lines[2].startswith("prod.env, line 4: unterminated")
    assert lines[3].startswith("prod.env, line 5: unexpected text after the closing quote")


def test_env_file_default_source_name() -> None:
    with pytest.raises(ValueError, match=r"^--env-file, line 1: "):
        parse_env_file("=x")


def test_env_file_feeds_interpolation() -> None:
    env = parse_env_file("TAG=1.2\n")
    assert interpolate("image: app:${TAG}", env) == "image: app:1.2"
