"""Parsing of Kubernetes-style quantities and Go-style durations. Pure functions."""

from __future__ import annotations

import re
from decimal import Decimal

_MEMORY_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_MEMORY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_CPU_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m)?$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UnitError(ValueError):
    """A value that is not a valid quantity or duration; the message shows valid forms."""


def parse_memory(value: str | int) -> int:
    """`512Mi`, `4Gi`, `1G`, `1048576` -> bytes."""
    if isinstance(value, bool):
        raise UnitError(f"invalid quantity {value!r} (use 512Mi, 4Gi, ...)")
    if isinstance(value, int):
        if value <= 0:
            raise UnitError(f"invalid quantity {value} (must be positive; use 512Mi, 4Gi, ...)")
        return value
    match = _MEMORY_RE.match(str(value).strip())
    if not match:
        raise UnitError(f'invalid quantity "{value}" (use 512Mi, 4Gi, ...)')
    number, suffix = match.groups()
    result = int(Decimal(number) * _MEMORY_SUFFIXES[suffix or ""])  # exact: 2.01G stays 2.01e9
    if result <= 0:
        raise UnitError(f'invalid quantity "{value}" (must be positive; use 512Mi, 4Gi, ...)')
    return result


def parse_cpu(value: str | int | float) -> int:
    """`500m`, `0.5`, `2` -> nano-CPUs as Docker's NanoCpus expects."""
    if isinstance(value, bool):
        raise UnitError(f"invalid cpu {value!r} (use 500m, 0.5, 2, ...)")
    text = str(value).strip()
    match = _CPU_RE.match(text)
    if not match:
        raise UnitError(f'invalid cpu "{value}" (use 500m, 0.5, 2, ...)')
    number, milli = match.groups()
    nanos = int(Decimal(number) * (10**6 if milli else 10**9))
    if nanos <= 0:
        raise UnitError(f'invalid cpu "{value}" (must be positive; use 500m, 0.5, 2, ...)')
    return nanos


def parse_duration(value: str | int | float) -> float:
    """`30m`, `1h30m`, `10s`, `250ms`, or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise UnitError(f"invalid duration {value!r} (use 30s, 10m, 1h30m, ...)")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"invalid duration {value} (must not be negative)")
        return float(value)
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise UnitError(f'invalid duration "{value}" (use 30s, 10m, 1h30m, ...)')
    return total


def format_bytes(value: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= size and value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)
