"""Variable interpolation of manifest text and `--env-file` parsing (SPEC 2).

The CLI runs this before it sends a manifest, so it stays stdlib only and fast.
Supported forms: `$VAR`, `${VAR}`, `${VAR:-default}` (default when unset or empty,
as in POSIX sh; the default may itself use variables) and `$$` for a literal `$`.
An undefined variable without a default is an error, never a silent empty string.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HINT = (
    "define them in the environment or an --env-file, give a default with "
    "${VAR:-default}, or write $$ for a literal $"
)


class InterpolationError(ValueError):
    """Text could not be interpolated: undefined variables and/or bad `${...}` syntax.

    `missing` lists every undefined variable once, in order of first use.
    """

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing: list[str] = list(missing or [])


@dataclass
class _Problems:
    """Everything wrong with one text, gathered so that all of it is reported at once."""

    missing: dict[str, list[int]] = field(default_factory=dict)
    syntax: list[str] = field(default_factory=list)

    def add_missing(self, name: str, line: int) -> None:
        lines = self.missing.setdefault(name, [])
        if line not in lines:
            lines.append(line)

    def raise_if_any(self) -> None:
        parts = list(self.syntax)
        if self.missing:
            parts.append(_missing_message(self.missing))
        if parts:
            raise InterpolationError("\n".join(parts), list(self.missing))


def _missing_message(missing: dict[str, list[int]]) -> str:
    names = ", ".join(f"{name} ({_lines(lines)})" for name, lines in missing.items())
    noun = "variable" if len(missing) == 1 else "variables"
    return f"undefined {noun}: {names}; {_HINT}"


def _lines(lines: list[int]) -> str:
    if len(lines) == 1:
        return f"line {lines[0]}"
    return "lines " + ", ".join(str(n) for n in lines)


class _Interpolator:
    """Expands one text; positions are mapped back to 1-based line numbers."""

    def __init__(self, text: str, env: Mapping[str, str]) -> None:
        self.text = text
        self.env = env
        self.problems = _Problems()
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def expand(self, start: int, end: int) -> str:
        """Expand text[start:end]; `${...}` found here never extends past `end`."""
        out: list[str] = []
        pos = start
        while pos < end:
            dollar = self.text.find("$", pos, end)
            if dollar < 0:
                out.append(self.text[pos:end])
                break
            out.append(self.text[pos:dollar])
            value, pos = self._dollar(dollar, end)
            out.append(value)
        return "".join(out)

    def _dollar(self, pos: int, end: int) -> tuple[str, int]:
        """Expand the `$` form at `pos`; return its value and the position after it."""
        nxt = pos + 1
        if nxt < end and self.text[nxt] == "$":
            return "$", nxt + 1
        if nxt < end and self.text[nxt] == "{":
            return self._braced(pos, end)
        match = _NAME.match(self.text, nxt, end)
        if match is None:
            return "$", nxt
        return self._lookup(match.group(), pos), match.end()

    def _lookup(self, name: str, pos: int) -> str:
        value = self.env.get(name)
        if value is None:
            self.problems.add_missing(name, self.line_of(pos))
            return ""
        return value

    def _braced(self, pos: int, end: int) -> tuple[str, int]:
        close = self._matching_brace(pos + 2, end)
        if close < 0:
            self._syntax(pos, 'unterminated "${" (close it with "}", or write $$ for a literal $)')
            return "", pos + 2
        match = _NAME.match(self.text, pos + 2, close)
        name_end = match.end() if match else pos + 2
        if match is None or not self._valid_tail(name_end, close):
            body = self.text[pos : close + 1]
            self._syntax(pos, f'bad substitution "{body}" (use ${{VAR}} or ${{VAR:-default}})')
            return "", close + 1
        name = match.group()
        if name_end == close:
            return self._lookup(name, pos), close + 1
        value = self.env.get(name)
        if value:
            return value, close + 1
        return self.expand(name_end + 2, close), close + 1

    def _valid_tail(self, name_end: int, close: int) -> bool:
        return name_end == close or self.text.startswith(":-", name_end)

    def _matching_brace(self, pos: int, end: int) -> int:
        """Index of the `}` closing a `${` whose body starts at `pos`, or -1."""
        depth = 1
        while pos < end:
            char = self.text[pos]
            if char == "$" and self.text.startswith("$$", pos):
                pos += 2
                continue
            if char == "$" and self.text.startswith("${", pos):
                depth += 1
                pos += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return pos
            pos += 1
        return -1

    def _syntax(self, pos: int, message: str) -> None:
        self.problems.syntax.append(f"line {self.line_of(pos)}: {message}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand `$VAR`, `${VAR}`, `${VAR:-default}` and `$$` in `text` from `env`.

    Raises InterpolationError naming every undefined variable (with its lines) and
    every malformed `${...}`, all at once.
    """
    interpolator = _Interpolator(text, env)
    result = interpolator.expand(0, len(text))
    interpolator.problems.raise_if_any()
    return result


def parse_env_file(text: str, source: str = "--env-file") -> dict[str, str]:
    """Parse `KEY=VALUE` lines (optional `export `, quotes, `#` comments).

    Values in single or double quotes keep everything between the quotes; an
    unquoted value ends at a ` #` comment. Every invalid line is reported at once.
    """
    values: dict[str, str] = {}
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key, value = _parse_env_line(line)
        except ValueError as exc:
            errors.append(f"{source}, line {number}: {exc}")
            continue
        values[key] = value
    if errors:
        raise InterpolationError("\n".join(errors))
    return values


def _parse_env_line(line: str) -> tuple[str, str]:
    if line.startswith("export ") or line.startswith("export\t"):
        line = line[len("export") :].lstrip()
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f'expected KEY=VALUE, got "{_shorten(line)}"')
    if not _FULL_NAME.match(key):
        raise ValueError(
            f'invalid variable name "{_shorten(key)}" (use letters, digits and _, '
            "not starting with a digit)"
        )
    return key, _parse_env_value(value.strip())


def _parse_env_value(value: str) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        close = value.find(quote, 1)
        if close < 0:
            raise ValueError(f"unterminated {quote} quote (values span a single line)")
        rest = value[close + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f'unexpected text after the closing quote: "{_shorten(rest)}"')
        return value[1:close]
    comment = re.search(r"\s#", value)
    return value[: comment.start()].rstrip() if comment else value


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
